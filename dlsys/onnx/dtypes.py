"""The element types of an ONNX model as dlsys computes them: float32 or float64 for the
floats, float32 for the narrow floats (float16, bfloat16, float8, float4: each of their
values is a float32 value, so inputs and initializers widen exactly and outputs are rounded
to their declared type), and floats for the integers, which they hold exactly up to 2**24
(float32) or 2**53 (float64). ``compute_dtype`` picks the type a model computes in.
"""

from __future__ import annotations

import numpy as np

from dlsys.onnx.reader import OnnxError, element_type

# The floating-point types a model may compute in (the type of its float inputs and
# initializers), by ONNX's name.
FLOAT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}
# The narrow floating-point types (float16, bfloat16, the float8 variants, float4), by
# numpy's name (ml_dtypes' for all but float16). dlsys computes them in float32: every
# value of theirs is a float32 value, so inputs and initializers widen exactly, and outputs
# are rounded to the declared type.
NARROW_FLOATS = frozenset({"float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz",
                           "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn"})
# The 4- and 2-bit integers (ml_dtypes' types, numpy kind "V"), by name, with the numpy
# integer type that holds each exactly: feeds are widened to it, outputs range-checked.
SMALL_INTEGERS = {"int4": np.int8, "uint4": np.uint8, "int2": np.int8, "uint2": np.uint8}


def is_integer_type(dtype) -> bool:
    """Whether ``dtype`` (a numpy type, or None) is an integer type, 4- and 2-bit included."""
    return dtype is not None and (np.dtype(dtype).kind in "iu"
                                  or np.dtype(dtype).name in SMALL_INTEGERS)


def is_narrow_float(dtype) -> bool:
    """Whether ``dtype`` (a numpy type, or None) is one of ``NARROW_FLOATS``."""
    return dtype is not None and np.dtype(dtype).name in NARROW_FLOATS


def narrow_float_type(code: int) -> np.dtype | None:
    """The numpy type of ONNX's element type ``code`` where it is a narrow float, else
    None."""
    from onnx import helper

    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if is_narrow_float(dtype) else None


def widened(array: np.ndarray) -> np.ndarray:
    """``array`` in float32 where it is of a narrow float type (exact), else itself."""
    return array.astype(np.float32) if is_narrow_float(array.dtype) else array


# The integer input types dlsys reads, as indices or as numbers folded in per run.
_INTEGER_TYPES = {f"tensor({t})" for t in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                           "uint16", "uint32", "uint64", "int4", "uint4",
                                           "int2", "uint2")}


def compute_dtype(model, input_names: list[str], declared: dict, read_as_constant: set[str],
                 where: str) -> str:
    """The floating-point type the model computes in, from the types of its float inputs
    and initializers (those it reads only as constants, or only for their type, aside);
    a model mixing float32 and float64, or of another float type, is refused naming one
    value of each."""
    found: dict[str, str] = {}  # dtype -> the first value of that type
    integer_inputs = False
    types = {v.name: element_type(v.type) for v in model.graph.input}
    type_only = _read_for_type_only(model.graph)
    for name in input_names:
        if name in read_as_constant:
            continue
        type_name = declared[name][1]
        if name in type_only and (type_name in FLOAT_TYPES or is_narrow_float(types[name])):
            continue  # its values are never computed with
        if type_name in FLOAT_TYPES:
            found.setdefault(FLOAT_TYPES[type_name], f"input {name!r}")
        elif is_narrow_float(types.get(name)):
            found.setdefault("float32", f"input {name!r} ({type_name}, computed in float32)")
        elif type_name not in _INTEGER_TYPES:
            # float8 of a kind numpy lacks, a sequence...; integer inputs are checked once
            # the graph shows how it reads them (``check_integer_inputs``).
            raise OnnxError(f"{where}: input {name!r} has type {type_name}; dlsys computes in "
                            f"float32 or float64 (float16, bfloat16 and float8 in float32)")
        else:
            integer_inputs |= type_name != "tensor(bool)"
    for tensor in model.graph.initializer:
        if tensor.name in read_as_constant:
            continue
        dtype = element_type(_tensor_type(tensor))
        if dtype is None or not is_float_type(dtype):
            continue
        name = "float32" if is_narrow_float(dtype) else dtype.name
        found.setdefault(name, f"initializer {tensor.name!r}")
    if len(found) > 1:
        raise OnnxError(f"{where}: the model mixes float32 ({found['float32']}) and float64 "
                        f"({found['float64']}) values; dlsys runs a model in one of them")
    if found:
        return found.popitem()[0]
    # No float value: an integer graph, whose integers float64 holds exactly to 2**53.
    return "float64" if integer_inputs else "float32"


def _read_for_type_only(graph) -> set[str]:
    """The graph's inputs that no node reads for their values: unread, or read only as a
    CastLike's second input, whose type alone counts."""
    values_read = {v.name for v in graph.output}
    for node in graph.node:
        type_source = 1 if node.op_type == "CastLike" else None
        values_read.update(name for i, name in enumerate(node.input) if i != type_source)
    return {v.name for v in graph.input} - values_read


def is_float_type(dtype) -> bool:
    """Whether ``dtype`` is a floating-point type, narrow ones included."""
    return np.issubdtype(dtype, np.floating) or is_narrow_float(dtype)


def _tensor_type(tensor):
    """A TypeProto of ``tensor``'s element type, for ``element_type``."""
    from onnx import helper

    return helper.make_tensor_type_proto(tensor.data_type, None)
