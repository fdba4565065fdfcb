"""``InferenceSession``: onnxruntime's interface over dlsys's passes and kernels, so that a
user swaps one import."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, DtypeError, FeedError, ShapeError
from dlsys.graph import Node, find_topo_sort
from dlsys.onnx.importer import import_model
from dlsys.ops.placeholder import Variable
from dlsys.runtime.executor import Executor

# Executors kept, one per set of input shapes: each holds its compiled kernels and its
# memory plan. A caller cycling through more shapes than this re-plans (the kernels stay
# in dlsys's kernel cache).
MAX_PLANS = 8


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: ``shape`` holds ints, the names of
    symbolic dimensions, or None where the file says nothing."""

    name: str
    shape: list | None
    type: str


@dataclass(frozen=True)
class ModelMetadata:
    """What the file says of itself, as onnxruntime's ``get_modelmeta()`` gives it;
    ``custom_metadata_map`` is the file's ``metadata_props``."""

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict[str, str]


class InferenceSession:
    """Runs the ONNX model in ``path_or_bytes`` with dlsys: ``run(output_names, feeds)`` as
    ``onnxruntime.InferenceSession.run``. The graph is compiled once per set of input
    shapes (shape inference, fusion, memory plan, kernels) and reused for every run at
    those shapes.

    A file whose inputs fix the batch size (PyTorch's default exporter fixes the example's)
    is run at that batch only, as onnxruntime does, and a feed of another batch is refused
    naming the fixed one (``fixed_batch``): dlsys cannot prove that a graph treats each row
    alone (a softmax or a mean over the batch axis, a reshape folding rows together), and
    the fixed batch is the only one the file's author ran. ``dlsys.onnx.import_model``
    leaves the batch free, for fine-tuning and for callers that know their model is
    row-wise."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, ctx=None):
        # sess_options and providers are onnxruntime's; accepted so code moves unchanged.
        self._model = import_model(path_or_bytes)
        self._inputs = [Variable(name) for name in self._model.input_names]
        outputs = self._model(*self._inputs)
        self._outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
        # The initializers are constants, as onnxruntime reads them: the weights' packed
        # layouts are made once per compiled shape (``passes.prepack``), not at every run.
        self._weights = [n for n in find_topo_sort(
            [v for v in self._outputs if isinstance(v, Node)]) if n.op.holds_value]
        self._ctx = ctx
        self._input_args = self.get_inputs()  # checked against at every run
        self._executors: dict[tuple, Executor] = {}
        # Each executor runs one call at a time itself; this guards the table of them.
        self._lock = threading.Lock()

    def _arg(self, name: str) -> NodeArg:
        dims, type_name = self._model.declared[name]
        return NodeArg(name, None if dims is None else list(dims), type_name)

    def get_inputs(self) -> list[NodeArg]:
        return [self._arg(name) for name in self._model.input_names]

    def get_outputs(self) -> list[NodeArg]:
        return [self._arg(name) for name in self._model.output_names]

    @property
    def class_names(self) -> list[str] | None:
        """The class names the file records (one per output column; written by
        ``dlsys.onnx.export``), or None where it records none."""
        return self._model.class_names

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the file's inputs fix, the only one ``run`` takes; None where the
        batch is free."""
        return self._model.fixed_batch

    def get_modelmeta(self) -> ModelMetadata:
        proto = self._model._model_proto
        return ModelMetadata(proto.producer_name, proto.graph.name, proto.domain,
                             proto.doc_string, proto.graph.doc_string, int(proto.model_version),
                             dict(self._model.metadata_props))

    @property
    def model(self):
        """The imported ``dlsys.nn.Module``. Its parameters are the session's constants:
        changes made with ``Parameter.assign`` or by training reach the next ``run``."""
        return self._model

    def run(self, output_names, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """The values of ``output_names`` (every output for None) for the inputs in
        ``input_feed`` (input name -> numpy array), as a list of numpy arrays."""
        wanted = self._wanted(output_names)
        arrays = self._check_feed(input_feed)
        key = tuple(a.shape for a in arrays)
        with self._lock:
            executor = self._executors.get(key)
            if executor is None:
                if len(self._executors) >= MAX_PLANS:
                    self._executors.pop(next(iter(self._executors)))
                nodes = [v for v in self._outputs if isinstance(v, Node)]
                executor = self._executors[key] = Executor(nodes, ctx=self._ctx,
                                                           constants=self._weights)
        feeds = {var: array for var, array in zip(self._inputs, arrays)
                 if var in executor.placeholders}
        computed = iter(executor.run(feeds, convert_to_numpy_ret_vals=True)
                        if executor.eval_node_list else [])
        results = [next(computed) if isinstance(v, Node) else np.array(v)
                   for v in self._outputs]
        return [results[i] for i in wanted]

    def _wanted(self, output_names) -> list[int]:
        names = self._model.output_names
        if output_names is None:
            return list(range(len(names)))
        if isinstance(output_names, str) or not isinstance(output_names, (list, tuple)):
            raise ArgumentTypeError(f"run: output_names must be a list of names or None, got "
                                    f"{output_names!r}")
        unknown = [n for n in output_names if n not in names]
        if unknown:
            raise ArgumentError(f"run: unknown output(s) {unknown}; the model's outputs are "
                                f"{names}")
        return [names.index(n) for n in output_names]

    def _check_feed(self, input_feed) -> list[np.ndarray]:
        if not isinstance(input_feed, dict):
            raise FeedError(f"run: input_feed must be a dict of input name -> numpy array, "
                            f"got {type(input_feed).__name__}")
        names = self._model.input_names
        unknown = [k for k in input_feed if k not in names]
        missing = [n for n in names if n not in input_feed]
        if unknown or missing:
            raise FeedError(f"run: the model's inputs are {names}; "
                            + "; ".join([f"missing {missing}"] * bool(missing)
                                        + [f"unknown {unknown}"] * bool(unknown)))
        arrays = []
        for arg in self._input_args:
            value = input_feed[arg.name]
            if not isinstance(value, np.ndarray):
                raise FeedError(f"run: input {arg.name!r} must be a numpy array, got "
                                f"{type(value).__name__}")
            if value.dtype != np.float32:
                raise DtypeError(f"run: input {arg.name!r} has dtype {value.dtype}; the model "
                                 f"takes {arg.type} (float32)")
            if arg.shape is not None and (len(arg.shape) != value.ndim or any(
                    isinstance(d, int) and d != n for d, n in zip(arg.shape, value.shape))):
                expected = tuple("?" if not isinstance(d, int) else d for d in arg.shape)
                raise ShapeError(f"run: input {arg.name!r} has shape {value.shape}; the model "
                                 f"takes {expected}" + self._batch_hint(arg, value.shape))
            arrays.append(value)
        return arrays

    def _batch_hint(self, arg: NodeArg, shape: tuple[int, ...]) -> str:
        """What to do when a feed differs from the input only in a batch the file fixes."""
        batch = self.fixed_batch
        if batch is None or len(shape) != len(arg.shape) or shape[0] == batch or any(
                isinstance(d, int) and d != n for d, n in zip(arg.shape[1:], shape[1:])):
            return ""
        return (f": the file fixes the batch size at {batch}; feed batches of {batch}, or "
                f"export the model with a free batch (torch.onnx.export(..., dynamic_shapes="
                f"...) with dynamo=True, dynamic_axes={{{arg.name!r}: {{0: 'batch'}}}} with "
                f"dynamo=False)")
