"""The model ``dlsys.compile`` compiles, as dlsys nodes: an ONNX file's graph or a
``dlsys.nn.Module`` traced on placeholders, and each input's shape."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, ShapeError
from dlsys.graph import Node
from dlsys.kernels import build


@dataclass
class Graph:
    """A model as dlsys nodes: its inputs (placeholders, named), outputs and weights."""

    input_names: list[str]
    output_names: list[str]
    # shapes -> (input placeholders, output nodes, dtype computed in, each input's dtype)
    build: Callable
    declared: dict = field(default_factory=dict)  # an ONNX input's shape as the file says


def _onnx_graph(source) -> Graph:
    from dlsys.onnx.importer import OnnxModule
    from dlsys.onnx.reader import OnnxError, load_model
    from dlsys.ops.placeholder import Variable

    model, where = load_model(source)
    module = OnnxModule(model, where)
    module.eval()
    folded = module.constant_read_inputs()
    if folded:
        raise OnnxError(f"{where}: input(s) {folded} are read as numbers fixed when the graph "
                        f"is built (a reshape's target shape); a compiled library takes only "
                        f"inputs its kernels read")

    def make(shapes: dict[str, tuple[int, ...]]):
        inputs = {name: Variable(name) for name in module.input_names}
        outputs = module.build_for_feeds(inputs, shapes)
        module.check_integer_inputs(inputs, outputs)
        for name, value in zip(module.output_names, outputs):
            if not isinstance(value, Node):
                raise OnnxError(f"{where}: output {name!r} is a constant of the file; a "
                                f"compiled library computes every output")
        for name, dtype in zip(module.output_names, module.output_dtypes):
            if dtype is not None and dtype.name != module.dtype:
                raise OnnxError(f"{where}: output {name!r} has type {dtype.name}, but the "
                                f"library returns what dlsys computes in ({module.dtype})")
        input_dtypes = {name: (np.dtype(dtype).name if dtype is not None and dtype.kind in "iu"
                               else module.dtype)
                        for name, dtype in zip(module.input_names, module.input_dtypes)}
        return ([inputs[n] for n in module.input_names], list(outputs), module.dtype,
                input_dtypes)

    return Graph(list(module.input_names), list(module.output_names), make,
                  {name: module.declared[name][0] for name in module.input_names})


def _module_graph(module, input_names: list[str]) -> Graph:
    from dlsys.ops.placeholder import Variable

    def make(shapes: dict[str, tuple[int, ...]]):
        inputs = [Variable(name) for name in input_names]
        was_training = module.training
        module.eval()
        try:
            out = module(*inputs)
        finally:
            module.train(was_training)
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        return inputs, outputs, "float32", {name: "float32" for name in input_names}

    return Graph(list(input_names), [], make)


def graph_of(model, input_shapes) -> tuple[Graph, dict[str, tuple[int, ...]]]:
    """The model's graph and each input's shape (``input_shapes``: a dict by input name, a
    list in input order, or None for the shapes an ONNX file fixes)."""
    from dlsys.nn.module import Module

    if isinstance(model, Module):
        if input_shapes is None:
            raise ArgumentError("dlsys.compile: a dlsys.nn.Module needs input_shapes")
        names = (list(input_shapes) if isinstance(input_shapes, Mapping)
                 else [f"input{i}" for i in range(len(_shape_list(input_shapes)))])
        graph = _module_graph(model, names)
    elif isinstance(model, (str, os.PathLike, bytes)) or type(model).__name__ == "ModelProto":
        graph = _onnx_graph(model)
    else:
        raise ArgumentTypeError(f"dlsys.compile: expected an ONNX file, a ModelProto or a "
                                f"dlsys.nn.Module, got {type(model).__name__}")
    if input_shapes is None:
        shapes = {}
        for name, dims in graph.declared.items():
            if dims is None or not all(isinstance(d, int) for d in dims):
                raise ShapeError(f"dlsys.compile: input {name!r} has shape {dims} in the file; "
                                 f"give its shape in input_shapes (--input-shape)")
            shapes[name] = tuple(dims)
    elif isinstance(input_shapes, Mapping):
        unknown = [n for n in input_shapes if n not in graph.input_names]
        missing = [n for n in graph.input_names if n not in input_shapes]
        if unknown or missing:
            raise ArgumentError(f"dlsys.compile: the model's inputs are {graph.input_names}; "
                                f"input_shapes names {list(input_shapes)}")
        shapes = {n: build.check_shape(f"input_shapes[{n!r}]", input_shapes[n])
                  for n in graph.input_names}
    else:
        listed = _shape_list(input_shapes)
        if len(listed) != len(graph.input_names):
            raise ArgumentError(f"dlsys.compile: the model takes {len(graph.input_names)} "
                                f"input(s) {graph.input_names}, input_shapes lists "
                                f"{len(listed)}")
        shapes = {n: build.check_shape(f"input_shapes[{i}]", s)
                  for i, (n, s) in enumerate(zip(graph.input_names, listed))}
    return graph, shapes


def _shape_list(input_shapes) -> list:
    if isinstance(input_shapes, (str, bytes)) or not isinstance(input_shapes, Sequence):
        raise ArgumentTypeError(f"dlsys.compile: input_shapes must be a dict of input name -> "
                                f"shape or a list of shapes, got {input_shapes!r}")
    # One shape given bare, (1, 784), for a one-input model.
    if input_shapes and all(isinstance(d, int) for d in input_shapes):
        return [tuple(input_shapes)]
    return list(input_shapes)

