"""``import_model``: an ONNX model as a trainable ``dlsys.nn.Module``.

The module's float initializers are its ``Parameter``s (a batch norm's running statistics
its buffers), so ``dlsys.optim`` fine-tunes them; calling the module on graph nodes walks
the ONNX graph and builds the dlsys graph, one converter of ``dlsys.onnx.ops`` per node.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np

from dlsys.errors import ArgumentTypeError, DlsysError
from dlsys.graph import Node, find_topo_sort
from dlsys.nn.module import Module
from dlsys.onnx.bounds import check_ranks, check_size, size_bound
from dlsys.onnx.dtypes import compute_dtype, is_float_type, widened
from dlsys.onnx.ops import CONVERTERS, Context, supported_ops
from dlsys.onnx.reader import (
    OnnxError,
    attributes,
    class_names,
    declared_values,
    element_type,
    element_types,
    fixed_batch,
    load_model,
    metadata_props,
    shapes_for_feeds,
    static_shapes,
    tensor_array,
    torch_input_kinds,
)
from dlsys.ops.placeholder import Parameter, Variable


class ValueTooLarge(OnnxError):
    """A value of the graph larger than ``bounds.size_bound`` allows (the message names its
    node): a refusal that no other set of shapes undoes."""


# Inputs of these ops that are state, not trained: batch norm's running mean and variance.
_BUFFER_INPUTS = {"BatchNormalization": (3, 4)}


class OnnxModule(Module):
    """An imported ONNX graph. ``input_names`` and ``output_names`` are the graph's; calling
    the module takes one node per input and returns the output node (a tuple of them when
    the graph has several outputs).

    What the file says of itself: ``class_names`` (a list of strings, or None where the file
    records none; see ``reader.CLASS_NAMES_KEY``), ``fixed_batch`` (the batch size the
    file's inputs declare, or None where they leave it free; the module itself takes any
    batch, the file's ``InferenceSession`` only that one) and ``metadata_props`` (all of the
    file's free-form metadata). ``metadata`` holds what the front end reads, as for a model
    from ``dlsys.load``: ``{"classes": class_names}`` when the file names its classes.

    ``dtype`` is the floating-point type the model computes in: "float64" for a model whose
    float inputs and initializers are all float64 (``double``), or that has none and takes
    integer inputs (an integer graph, whose values float64 holds exactly up to 2**53), else
    "float32"; a model mixing float32 and float64 is refused. The narrow floats (float16,
    bfloat16, float8) are computed in float32: their initializers are widened here (exactly),
    inputs and outputs converted by the session. ``input_dtypes`` and ``output_dtypes``
    hold the numpy types the file declares (None where it declares none). Integer inputs
    are taken as the indices an operator reads (``Op.index_inputs``; see
    ``check_integer_inputs``).

    Every float initializer is a parameter, except a batch norm's running statistics
    (buffers) and, in a file from PyTorch's default (dynamo) exporter, which records what
    each tensor was (``reader.torch_input_kinds``), every one that was not a module
    parameter: ``folded`` names those the exporter computed itself (an attention mask, a
    GELU's constant, a transposed weight). They are buffers, fixed while training: a
    folded copy of a weight no longer follows the weight, so ``train()`` warns of them."""

    def __init__(self, model, where: str):
        super().__init__()
        model = _own_buffers(model)
        graph = model.graph
        self.source = where
        initializers = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        self.declared = declared_values(model)
        self._dtypes = element_types(model)  # each value's ONNX type, for the converters
        types = {v.name: element_type(v.type) for v in (*graph.input, *graph.output)}
        self.input_dtypes = [types[name] for name in self.input_names]
        self.output_dtypes = [types[name] for name in self.output_names]
        # An initializer is a weight, trained whatever its size (a Linear(n, 1) bias is one
        # number), unless the graph reads it only where an op takes a number fixed by the
        # file; integer ones are shapes and axes. Inputs read so are folded in per run by
        # the session; neither decides the type the model computes in.
        read_as_constant = _read_only_as_constants(graph)
        self.dtype = compute_dtype(model, self.input_names, self.declared, read_as_constant,
                                   where)
        self.metadata_props = metadata_props(model)
        self.class_names = class_names(model, where)
        self.fixed_batch = fixed_batch(self.declared, self.input_names)
        self.metadata = {} if self.class_names is None else {"classes": self.class_names}
        self._shapes = static_shapes(model)
        self._fixed_shapes = None  # as the file fixes them, inferred only if a node asks
        self._model_proto = model
        self._constants: dict[str, np.ndarray] = {}
        self.folded: list[str] = []
        self._take_initializers(model, read_as_constant, where)
        # Constant nodes hold values fixed by the file: taken once here, like initializers
        # that no optimiser updates; a single number is kept as one, for the by-constant
        # operators, and so is an empty tensor (a Resize's omitted roi, as PyTorch writes it).
        self._nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node, where)
                if not is_float_type(value.dtype) or value.size <= 1 and value.ndim <= 1:
                    self._constants[node.output[0]] = value
                else:
                    # A number the file fixes, taken in the type the model computes in.
                    self._add_tensor(node.output[0], value.astype(self.dtype), True, where)
            else:
                self._nodes.append(node)
        # Each value's shape for one batch row while ``build_checked`` builds the graph, to
        # bound what a run may allocate (``bounds.SIZE_FACTOR``); None otherwise. Set past
        # Module.__setattr__, which would drop an initializer of the same name.
        object.__setattr__(self, "_row_shapes", None)
        object.__setattr__(self, "_rows_exact", False)
        object.__setattr__(self, "_size_bound", 0)

    def train(self, mode: bool = True) -> OnnxModule:
        if mode and self.folded:
            shown = ", ".join(self.folded[:6]) + (", ..." if len(self.folded) > 6 else "")
            warnings.warn(f"{self.source}: PyTorch's exporter folded {len(self.folded)} "
                          f"tensor(s) into fixed values ({shown}); training leaves them as "
                          f"they are. To fine-tune every weight, export with dynamo=False "
                          f"and do_constant_folding=False.", stacklevel=2)
        return super().train(mode)

    def _take_initializers(self, model, read_as_constant: set[str], where: str) -> None:
        """The file's initializers as constants (integers, and values read only as numbers
        fixed by the file), buffers (a batch norm's running statistics; in a file from
        PyTorch's dynamo exporter, every tensor it does not record as a parameter) or
        parameters."""
        graph = model.graph
        buffers = {node.input[i] for node in graph.node
                   for i in _BUFFER_INPUTS.get(node.op_type, ()) if i < len(node.input)}
        # Where PyTorch's exporter says which tensors were the module's parameters, only
        # those are trained; what it folded into initializers stays fixed (``folded``).
        kinds = torch_input_kinds(model)
        for tensor in graph.initializer:
            array = tensor_array(tensor)
            if tensor.name in read_as_constant or not is_float_type(array.dtype):
                self._constants[tensor.name] = array
                continue
            fixed = tensor.name in buffers
            if kinds is not None and kinds.get(tensor.name) != "PARAMETER":
                fixed = True
                if tensor.name not in kinds:
                    self.folded.append(tensor.name)
            self._add_tensor(tensor.name, widened(array), fixed, where)

    def _add_tensor(self, name: str, array: np.ndarray, buffer: bool, where: str) -> None:
        if array.dtype != self.dtype:
            raise OnnxError(f"{where}: tensor {name!r} is {array.dtype}; the model computes "
                            f"in {self.dtype}, and dlsys imports float32 or float64 models")
        if 0 in array.shape:
            raise OnnxError(f"{where}: tensor {name!r} is empty (shape {array.shape})")
        # dlsys tensors have at least one axis: a 0-d initializer (a learned temperature) is
        # held as (1,), which broadcasts alike, and written back 0-d by ``to_proto``.
        value = Parameter(array.reshape(1) if array.ndim == 0 else array, name)
        # Stored under the file's own names (which may hold dots or clash with attribute
        # names), so state_dict keys are the initializers' names.
        (self._buffers if buffer else self._parameters)[name] = value

    def forward(self, *inputs: Node):
        if len(inputs) != len(self.input_names):
            raise ArgumentTypeError(f"{self.source}: the model takes {len(self.input_names)} "
                                    f"input(s) {self.input_names}, got {len(inputs)}")
        results = self._walk(dict(zip(self.input_names, inputs)), self._shapes, self._fixed)
        return results[0] if len(results) == 1 else results

    def build_for_feeds(self, inputs: dict[str, Node | np.ndarray],
                        input_shapes: dict[str, tuple[int, ...]]) -> tuple:
        """The graph's outputs (a tuple) built for one set of feeds: ``inputs`` maps each
        input's name to its node, or to its value where the graph reads it as a number
        fixed when the graph is built (a reshape's target shape fed as an input), and
        ``input_shapes`` gives the fed shapes. The converters see every size ONNX's shape
        inference finds at those shapes (a Shape node's of a symbolic batch among them)."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ArgumentTypeError(f"{self.source}: no value for input(s) {missing}")
        values = {name: v for name, v in inputs.items() if isinstance(v, np.ndarray)}
        shapes = shapes_for_feeds(self._model_proto, input_shapes, values)
        return self._walk(inputs, shapes, lambda: shapes)

    def _walk(self, inputs: dict, shapes: dict, fixed) -> tuple:
        """The outputs for ``inputs`` (input name -> node or constant), converting every
        node with ``shapes`` as the sizes its converter may read."""
        values: dict[str, object] = dict(self._constants)
        values.update(self._parameters)
        values.update(self._buffers)
        values.update(inputs)
        for node in self._nodes:
            outputs = self._convert(node, values, shapes, fixed)
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = value
        return tuple(values[name] for name in self.output_names)

    def constant_read_inputs(self) -> list[str]:
        """The inputs that every node reading them reads as a number fixed when the graph
        is built (a reshape's target shape, a Clip's bounds fed as inputs)."""
        read_as_constant = _read_only_as_constants(self._model_proto.graph)
        return [name for name in self.input_names if name in read_as_constant]

    def check_supported(self) -> None:
        """Refuse, naming the node, an operator or attribute dlsys does not convert: what
        building the graph would refuse first, told without building it."""
        for node in self._nodes:
            entry = CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            where = f"{self.source}: {node.op_type} node {node.name or node.output[0]!r}"
            if entry is None:
                domain = (f" of domain {node.domain!r}"
                          if node.domain not in ("", "ai.onnx") else "")
                raise OnnxError(f"{where}: operator {node.op_type!r}{domain} is not "
                                f"supported; dlsys imports {', '.join(supported_ops())}")
            unknown = sorted(set(attributes(node)) - entry.attrs)
            if unknown:
                raise OnnxError(f"{where}: attribute(s) {unknown} are not supported; "
                                f"{node.op_type} takes {sorted(entry.attrs) or 'none'}")

    def check_integer_inputs(self, inputs: dict[str, Node], outputs) -> None:
        """Refuse an integer input the built graph reads other than as indices
        (``Op.index_inputs``, or ``optional_index_inputs``: a Cast to float's kernel reads
        integers as numbers) in a model computed in float32, which would round the integers
        it computed with past 2**24; a float64 model reads them as numbers (exact up to
        2**53, which the session checks at the feeds and outputs). A bool input is a mask of
        0.0 and 1.0 (exact), except as ids."""
        from dlsys.passes.dtypes import index_placeholders

        order = find_topo_sort([v for v in outputs if isinstance(v, Node)])
        indices = {**index_placeholders(order), **index_placeholders(order, optional=True)}
        read = set(order)
        for name, dtype in zip(self.input_names, self.input_dtypes):
            node = inputs.get(name)
            if dtype is None or dtype.kind not in "iub" or not isinstance(node, Node):
                continue
            if node not in read:
                continue
            if dtype.kind == "b" and node not in indices:
                # A bool input is a mask, read as 0.0 and 1.0: exact for every operator
                # ONNX lets read bools (logic, comparisons of bools, Where's condition, Cast).
                continue
            if dtype.kind in "iu" and node not in indices and self.dtype == "float64":
                continue  # an integer graph, computed exactly in float64
            if dtype.kind == "b" or node not in indices:
                raise OnnxError(
                    f"{self.source}: input {name!r} has type {self.declared[name][1]}; dlsys "
                    f"computes in {self.dtype} and reads integer inputs only as indices (a "
                    f"Gather's indices into an initializer), as numbers fixed per run (a "
                    f"Reshape's shape) or through a Cast to float, which this graph does not; "
                    f"an integer graph computes in float64, a model without float32 values")

    def _convert(self, node, values: dict, shapes: dict, fixed) -> tuple:
        entry = CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        where = f"{self.source}: {node.op_type} node {node.name or node.output[0]!r}"
        if entry is None:
            domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
            raise OnnxError(f"{where}: operator {node.op_type!r}{domain} is not supported; "
                            f"dlsys imports {', '.join(supported_ops())}")
        fn, known = entry.fn, entry.attrs
        attrs = attributes(node)
        unknown = sorted(set(attrs) - known)
        if unknown:
            raise OnnxError(f"{where}: attribute(s) {unknown} are not supported; "
                            f"{node.op_type} takes {sorted(known) or 'none'}")
        low, high = _arity(fn)
        if not low <= len(node.input) <= high:
            raise OnnxError(f"{where}: {len(node.input)} inputs; dlsys's {node.op_type} takes "
                            f"{low} to {high}")
        args = [values[name] if name else None for name in node.input]
        ctx = Context(node, attrs, shapes, self.training, fixed, self._dtypes, self.dtype)
        first = ctx.input_dims(0, args[0]) if args and args[0] is not None else None
        check_ranks(where, entry.ranked, attrs, None if first is None else len(first))
        try:
            out = fn(ctx, *args)
        except OnnxError as err:
            raise OnnxError(f"{self.source}: {err}") from None
        except DlsysError as err:
            # A dlsys operator refused the node's values: say which ONNX node built it.
            raise type(err)(f"{where}: {err}") from None
        out = out if isinstance(out, tuple) else (out,)
        if self._row_shapes is not None:
            self._check_sizes(where, out)
        return out

    def build_checked(self) -> tuple[list[Node], tuple]:
        """Build the graph once on placeholders, as ``import_model`` does to refuse a bad node
        now, following each value's shape for one batch row of the declared inputs (the
        file's batch where it fixes one): a value larger than ``bounds.size_bound`` is
        refused naming its node, before any run asks for its memory. Returns the
        placeholders (one per input) and the outputs (a tuple) built on them."""
        inputs = [Variable(name) for name in self.input_names]
        declared = [self.declared[name][0] for name in self.input_names]
        if any(dims is None for dims in declared):  # a rank unknown: nothing to follow
            return inputs, self._walk(dict(zip(self.input_names, inputs)), self._shapes,
                                      self._fixed)
        rows = {node: tuple(d if isinstance(d, int) else 1 for d in dims)
                for node, dims in zip(inputs, declared)}
        sizes = [int(np.size(v)) for v in self._constants.values()]
        sizes += [math.prod(v.shape) for v in (*self._parameters.values(),
                                               *self._buffers.values())]
        object.__setattr__(self, "_size_bound", size_bound(list(rows.values()), sizes))
        object.__setattr__(self, "_rows_exact",
                           all(isinstance(d, int) for dims in declared for d in dims))
        object.__setattr__(self, "_row_shapes", rows)
        try:
            return inputs, self._walk(dict(zip(self.input_names, inputs)), self._shapes,
                                      self._fixed)
        finally:
            object.__setattr__(self, "_row_shapes", None)

    def _check_sizes(self, where: str, outputs: tuple) -> None:
        shapes = self._row_shapes
        # The nodes this ONNX node added, each after its inputs (depth first, a node seen
        # again once its inputs are done).
        stack = [(v, False) for v in outputs if isinstance(v, Node)]
        while stack:
            node, inputs_done = stack.pop()
            if node in shapes:
                continue
            if not inputs_done:
                stack.append((node, True))
                stack.extend((i, False) for i in node.inputs if i not in shapes)
                continue
            try:
                if node.op.holds_value:
                    shapes[node] = tuple(node.shape)
                else:
                    shapes[node] = tuple(node.op.infer_shape(node, [shapes[i]
                                                                    for i in node.inputs]))
            except DlsysError as err:
                if self._rows_exact:  # the very shapes every run of the file has
                    raise type(err)(f"{where}: {err}") from None
                # A symbolic size taken as 1 that the graph does not allow: the run's own
                # shape checks, at the sizes fed, refuse what is really wrong.
                object.__setattr__(self, "_row_shapes", None)
                return
            try:
                check_size(where, f"value {node.name!r}", shapes[node], self._size_bound)
            except OnnxError as err:
                raise ValueTooLarge(str(err)) from None

    def to_proto(self):
        """The imported model with its initializers' current values (after fine-tuning):
        the file's graph and metadata as they were, every tensor of the module replaced."""
        from onnx import ModelProto, numpy_helper

        proto = ModelProto()
        proto.CopyFrom(self._model_proto)
        values = {**self._parameters, **self._buffers}
        for tensor in proto.graph.initializer:
            if tensor.name in values:
                array = values[tensor.name].numpy().reshape(tuple(tensor.dims))
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        return proto

    def _fixed(self) -> dict:
        if self._fixed_shapes is None:
            object.__setattr__(self, "_fixed_shapes", static_shapes(self._model_proto, False))
        return self._fixed_shapes

    def extra_repr(self) -> str:
        return (f"{self.source}, inputs {self.input_names}, outputs {self.output_names}, "
                f"{len(self._nodes)} nodes")


def _read_only_as_constants(graph) -> set[str]:
    """Names that every node reading them reads at one of its op's constant inputs."""
    as_constant, as_tensor = set(), {v.name for v in graph.output}
    for node in graph.node:
        entry = CONVERTERS.get(node.op_type)
        constant_inputs = entry.constant_inputs if entry is not None else frozenset()
        for i, name in enumerate(node.input):
            (as_constant if i in constant_inputs else as_tensor).add(name)
    return as_constant - as_tensor


def _own_buffers(model):
    """``model`` where every state input (batch norm's running statistics) is an initializer
    no other input reads. An exporter writes equal tensors once: a fresh batch norm's scale
    and running variance (both ones) become one initializer, and training, which updates
    the statistics in place, would overwrite the scale with them. Such an input gets a copy
    of its own, named ``<name>.<node>.<slot>``; ``model`` itself is left as it is."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    reads: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            reads[name] = reads.get(name, 0) + 1
    for out in graph.output:
        reads[out.name] = reads.get(out.name, 0) + 1
    shared = [(k, i) for k, node in enumerate(graph.node)
              for i in _BUFFER_INPUTS.get(node.op_type, ()) if i < len(node.input)
              and node.input[i] in initializers and reads[node.input[i]] > 1]
    if not shared:
        return model
    import onnx

    owned = onnx.ModelProto()
    owned.CopyFrom(model)
    for k, i in shared:
        node = owned.graph.node[k]
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[node.input[i]])
        copy.name = f"{node.input[i]}.{node.name or k}.{i}"
        owned.graph.initializer.append(copy)
        node.input[i] = copy.name
    return owned


def _arity(fn) -> tuple[int, float]:
    """How many inputs converter ``fn`` takes: its parameters after the context, without a
    default the least, all of them the most (any number where it takes ``*inputs``: Concat,
    Sum, Einsum)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        required = [p for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        return sum(p.default is inspect.Parameter.empty for p in required), math.inf
    return sum(p.default is inspect.Parameter.empty for p in params), len(params)


def _constant_value(node, where: str) -> np.ndarray:
    attrs = attributes(node)
    for key, dtype in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise OnnxError(f"{where}: Constant node {node.name or node.output[0]!r}: attribute(s) "
                    f"{sorted(attrs)} are not supported; Constant takes value, value_float(s) "
                    f"or value_int(s)")


def import_model(source) -> OnnxModule:
    """The ONNX model in ``source`` (a path, the file's bytes or an ``onnx.ModelProto``) as a
    ``dlsys.nn.Module``, in eval mode (an exported model is an inference graph; ``train()``
    makes its batch norms use batch statistics, for fine-tuning).

    Every node is converted once here, so an unsupported operator or attribute, or a
    corrupt file, is refused now rather than at the first call.
    """
    model, where = load_model(source)
    module = OnnxModule(model, where)
    module.eval()
    inputs, outputs = module.build_checked()
    module.check_integer_inputs(dict(zip(module.input_names, inputs)), outputs)
    return module
