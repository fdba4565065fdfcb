"""``InferenceSession``: onnxruntime's interface over dlsys's passes and kernels, so that a
user swaps one import."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from dlsys.errors import (
    ArgumentError,
    ArgumentTypeError,
    DlsysError,
    DtypeError,
    FeedError,
    ShapeError,
)
from dlsys.graph import Node, find_topo_sort
from dlsys.onnx.dtypes import NARROW_FLOATS, SMALL_INTEGERS, is_integer_type, is_narrow_float
from dlsys.onnx.importer import OnnxModule, ValueTooLarge
from dlsys.onnx.reader import OnnxError, load_model
from dlsys.ops.placeholder import Variable
from dlsys.runtime.executor import Executor

# Executors kept, one per set of input shapes: each holds its compiled kernels and its
# memory plan. A caller cycling through more shapes than this re-plans (the kernels stay
# in dlsys's kernel cache).
MAX_PLANS = 8
# The output types a session returns: what dlsys computes in, the narrow floats it computes
# in float32, and the integers and bools that it computes as floating-point values (each
# cast back in ``_as_declared``).
OUTPUT_DTYPES = {"float32", "float64", "bool", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", *NARROW_FLOATS, *SMALL_INTEGERS}
# The integers each floating-point type holds exactly, every one up to this magnitude.
EXACT_INTEGERS = {"float32": 2 ** 24, "float64": 2 ** 53}


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: ``shape`` holds ints, the names of
    symbolic dimensions, or None where the file says nothing."""

    name: str
    shape: list | None
    type: str


@dataclass
class _Graph:
    """The dlsys graph of the model built for some feeds: one placeholder per input the
    graph computes on (None for one folded in as a constant), the outputs, and the
    parameters read, which the executors treat as constants."""

    inputs: list[Node | None]
    outputs: list
    weights: list[Node]

    @classmethod
    def of(cls, inputs: list[Node | None], outputs) -> _Graph:
        outputs = list(outputs)
        weights = [n for n in find_topo_sort([v for v in outputs if isinstance(v, Node)])
                   if n.op.holds_value]
        return cls(inputs, outputs, weights)


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
    row-wise.

    Types. A model whose float inputs and initializers are float64 runs in float64 (and
    takes float64 feeds); one mixing float32 and float64 is refused. Narrow floats (float16,
    bfloat16, float8) are computed in float32: their feeds and initializers are widened
    (exactly: each of their values is a float32 value), a Cast to float16 or bfloat16 inside
    the graph rounds to that type's nearest value, and outputs are rounded to their
    declared type. Computing between the casts in float32 is more precise than onnxruntime's
    float16 kernels, so results may differ from them by float16 roundings.

    Integer graphs. A model without float values that computes on integer inputs (sums,
    products, Div, Mod, BitShift, comparisons, Where, reductions) runs in float64, which
    holds every integer up to 2**53 exactly, with ONNX's integer semantics built from float
    operators (Div truncates toward zero, Mod takes the divisor's sign unless ``fmod``).
    An integer feed past 2**53 in magnitude is refused naming the input, and an integer
    output that is not a whole number in its declared type's range (a product past 2**53,
    an int32 overflow that onnxruntime would wrap) is refused naming the output, never
    wrapped or rounded. Values inside the graph are checked only where they are outputs.
    In a float32 model an integer input is
    taken where the graph reads it as indices (a Gather's into an initializer: fed as int32
    or int64, never rounded through a float) or, where every node reading it reads a number
    fixed when the graph is built (a Reshape's target shape, a TopK's k fed as an input),
    folded in as a constant: the graph is built again for each new value fed (kept, as the
    compiled shapes are, up to ``MAX_PLANS``); an input the graph casts to float before it
    computes with it (BERT's attention mask) is read so by its first kernel. A bool input is
    a mask, read as 0.0 and 1.0. Any other integer input is refused, naming it. Outputs
    come back in the type the file declares: a bool or integer output that dlsys computes
    as floating-point 0/1 or indices is rounded and cast at the boundary here.

    Shapes. The graph is built once on placeholders where the converters need no size
    unknown before the run; where one does (a Shape node of a symbolic batch, a Reshape to
    a computed shape), it is built for each set of fed shapes, with the sizes ONNX's shape
    inference finds at those shapes."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, ctx=None):
        # sess_options and providers are onnxruntime's; accepted so code moves unchanged.
        model, where = load_model(path_or_bytes)
        self._model = OnnxModule(model, where)
        self._model.eval()
        for name, dtype in zip(self._model.output_names, self._model.output_dtypes):
            if dtype is not None and dtype.name not in OUTPUT_DTYPES:
                raise OnnxError(f"{where}: output {name!r} has type "
                                f"{self._model.declared[name][1]}; dlsys computes in float32 "
                                f"or float64 and returns outputs of those types, integers or "
                                f"bools")
        names = self._model.input_names
        folded = set(self._model.constant_read_inputs())
        self._folded = [name in folded for name in names]
        self._ctx = ctx
        self._input_args = self.get_inputs()  # checked against at every run
        # The graph built on placeholders, for every feed; None where the graph is built
        # per set of feeds (``_graph_for``).
        self._graph: _Graph | None = None
        if not folded:
            self._graph = self._build_generic()
        if self._graph is None:
            self._model.check_supported()
        # Executors, and the graph each runs, per set of feeds' shapes (and folded values).
        self._executors: dict[tuple, Executor] = {}
        self._graphs: dict[tuple, _Graph] = {}
        # Each executor runs one call at a time itself; this guards the table of them.
        self._lock = threading.Lock()
        self._repeat: _RepeatableRun | None = None

    def _build_generic(self) -> _Graph | None:
        """The graph on placeholders, checked as ``import_model`` checks it; None where a
        converter needs a size that only the feeds tell. A model whose inputs all declare
        fixed shapes, which are the only ones it takes, is built at those shapes instead."""
        model = self._model
        try:
            inputs, outputs = model.build_checked()
        except ValueTooLarge:
            raise
        except DlsysError:  # a converter's refusal of an unknown size (an OnnxError, mostly)
            declared = [model.declared[name][0] for name in model.input_names]
            if any(dims is None or not all(isinstance(d, int) for d in dims)
                   for dims in declared):
                return None  # built per set of feeds; a real refusal shows at the first run
            inputs = [Variable(name) for name in model.input_names]
            outputs = model.build_for_feeds(dict(zip(model.input_names, inputs)),
                                            dict(zip(model.input_names, declared)))
        model.check_integer_inputs(dict(zip(model.input_names, inputs)), outputs)
        return _Graph.of(inputs, outputs)

    def _graph_for(self, arrays: list[np.ndarray]) -> _Graph:
        """The graph built for these feeds: their shapes, the folded inputs' values."""
        model = self._model
        inputs = {name: array if folded else Variable(name)
                  for name, array, folded in zip(model.input_names, arrays, self._folded)}
        shapes = {name: tuple(a.shape) for name, a in zip(model.input_names, arrays)}
        outputs = model.build_for_feeds(inputs, shapes)
        model.check_integer_inputs(inputs, outputs)
        return _Graph.of([v if isinstance(v, Node) else None for v in inputs.values()],
                         outputs)

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
        repeat = self._repeat
        if repeat is not None and output_names is None and type(input_feed) is dict:
            values = repeat.run(input_feed)
            if values is not None:
                return values
        wanted = self._wanted(output_names)
        arrays = self._check_feed(input_feed)
        key = tuple(a.shape if not folded else (a.dtype.str, a.shape, a.tobytes())
                    for a, folded in zip(arrays, self._folded))
        with self._lock:
            executor = self._executors.get(key)
            if executor is None:
                graph = self._graph if self._graph is not None else self._graph_for(arrays)
                if len(self._executors) >= MAX_PLANS:
                    oldest = next(iter(self._executors))
                    del self._executors[oldest], self._graphs[oldest]
                # The initializers are constants, as onnxruntime reads them: the weights'
                # packed layouts are made once per compiled shape (``passes.prepack``).
                nodes = [v for v in graph.outputs if isinstance(v, Node)]
                executor = self._executors[key] = Executor(
                    nodes, ctx=self._ctx, dtype=self._model.dtype, constants=graph.weights)
                self._graphs[key] = graph
            graph = self._graphs[key]
        feeds = {var: array for var, array in zip(graph.inputs, arrays)
                 if var is not None and var in executor.placeholders}
        computed = iter(executor.run(feeds, convert_to_numpy_ret_vals=True)
                        if executor.eval_node_list else [])
        results = [next(computed) if isinstance(v, Node) else np.array(v)
                   for v in graph.outputs]
        names, dtypes = self._model.output_names, self._model.output_dtypes
        declared = [_as_declared(results[i], dtypes[i], self._model.declared[names[i]][0],
                                 names[i], self._model.dtype)
                    for i in wanted]
        self._repeat = _RepeatableRun.of(self, output_names, arrays, feeds, executor, graph,
                                         results, declared)
        return declared

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
        for arg, dtype in zip(self._input_args, self._model.input_dtypes):
            value = input_feed[arg.name]
            if not isinstance(value, np.ndarray):
                raise FeedError(f"run: input {arg.name!r} must be a numpy array, got "
                                f"{type(value).__name__}")
            if dtype is not None and value.dtype != dtype and not (
                    dtype.kind in "iu" and value.dtype.kind in "iu"):
                raise DtypeError(f"run: input {arg.name!r} has dtype {value.dtype}; the model "
                                 f"takes {arg.type} ({dtype})")
            if is_narrow_float(value.dtype):
                value = value.astype(np.float32)  # exact: dlsys computes them in float32
            elif value.dtype.name in SMALL_INTEGERS:
                value = value.astype(SMALL_INTEGERS[value.dtype.name])  # exact
            if is_integer_type(dtype) and value.size:
                _check_exact_feed(arg.name, value, self._model.dtype)
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


def _check_exact_feed(name: str, value: np.ndarray, compute_dtype: str) -> None:
    """Refuse an integer feed that a float64 model would not hold exactly (past 2**53)."""
    if compute_dtype != "float64":
        return  # float32 models read integers as ids or through a Cast, as documented
    low, high = int(value.min()), int(value.max())
    limit = EXACT_INTEGERS["float64"]
    if low < -limit or high > limit:
        raise FeedError(f"run: input {name!r} holds {low if low < -limit else high}, past "
                        f"2**53: dlsys computes integer graphs in float64, which holds "
                        f"integers exactly only up to 2**53 in magnitude")


@dataclass(frozen=True)
class _RepeatableRun:
    """A run that the next one may repeat without the checks and conversions of ``run``:
    the same inputs fed arrays of the same dtypes and shapes, every output asked for, none
    converted on the way out. A serving loop's calls are such runs; the executor's own
    repeated-feeds path then makes the run one native call. Anything else (another shape,
    an integer or narrow input, an output cast or reshaped, a folded input) takes the full
    path of ``run``."""

    inputs: tuple           # (name, placeholder) per input fed
    executor: Executor

    @classmethod
    def of(cls, session, output_names, arrays, feeds, executor, graph, results, declared):
        """The record of a run just made by ``run``, or None where it cannot be repeated."""
        model = session._model
        if (output_names is not None or any(session._folded) or not executor.eval_node_list
                or not all(isinstance(v, Node) for v in graph.outputs)
                or any(a is not b for a, b in zip(results, declared))):
            return None
        inputs = []
        for name, var, array in zip(model.input_names, graph.inputs, arrays):
            if var is None or var not in feeds:
                return None  # an input the graph does not read: still checked by name
            if array.dtype.kind not in "f" or array.dtype.name != model.dtype:
                return None  # integers are checked for exactness, narrow floats widened
            inputs.append((name, var))
        return cls(tuple(inputs), executor)

    def run(self, input_feed: dict) -> list[np.ndarray] | None:
        if len(input_feed) != len(self.inputs):
            return None
        # The executor's repeated run checks each array's type, shape and dtype against
        # its plan's (those of this record's arrays), and returns None where one differs:
        # called directly, not through ``Executor.run``, which checks the same again.
        repeat = self.executor.repeated_run
        if repeat is None:
            return None
        feeds = {}
        for name, var in self.inputs:
            feeds[var] = input_feed.get(name)
        return repeat(feeds, math.nan, True)


def _as_declared(array: np.ndarray, dtype: np.dtype | None, dims: tuple | None,
                 name: str = "", compute_dtype: str = "float32") -> np.ndarray:
    """An output in the type and rank the file declares for it: dlsys computes comparisons
    as floating-point 0/1, integers as floating-point whole numbers and narrow floats in
    float32, which are cast back here; a scalar, which dlsys holds as one element of shape
    (1,), comes back 0-d where the file declares it so.

    An integer output must be a whole number in the declared type's range, and within the
    integers ``compute_dtype`` holds exactly (a float32 index is rounded first, so that
    2.9999999 is 3): anything else is refused naming the output, never wrapped or rounded
    silently."""
    if dims == () and array.shape == (1,):
        array = array.reshape(())
    if dtype is None or array.dtype == dtype:
        return array
    if dtype.kind == "b":
        return array != 0
    if is_integer_type(dtype) and array.dtype.kind == "f":
        whole = np.rint(array) if compute_dtype == "float32" else array
        _check_integer_output(name, whole, dtype, compute_dtype)
        return whole.astype(dtype)
    return array.astype(dtype)


def _integer_range(dtype: np.dtype):
    """numpy's ``iinfo`` of ``dtype``, ml_dtypes' for its 4- and 2-bit integers."""
    if dtype.name in SMALL_INTEGERS:
        import ml_dtypes

        return ml_dtypes.iinfo(dtype)
    return np.iinfo(dtype)


def _check_integer_output(name: str, array: np.ndarray, dtype: np.dtype,
                          compute_dtype: str) -> None:
    """Refuse an integer output that is not exactly the integer ONNX would compute."""
    if not array.size:
        return
    info = _integer_range(dtype)
    limit = EXACT_INTEGERS.get(compute_dtype, EXACT_INTEGERS["float32"])
    low, high = max(info.min, -limit), min(info.max, limit)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(array) & (array == np.floor(array)) & (array >= low)
                & (array <= high))
    if bad.any():
        value = float(array.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])])
        value = int(value) if np.isfinite(value) and value == int(value) else value
        raise OnnxError(f"run: output {name!r} ({dtype}) computes {value}, which is not "
                        f"an integer of {dtype} held exactly in {compute_dtype} (between "
                        f"{low} and {high}): dlsys computes integers in floating point and "
                        f"refuses to wrap or round an overflowed or inexact one")
