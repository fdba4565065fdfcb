"""The executor: runs what the graph passes decided, and nothing else.

For each new set of feed shapes it compiles the graph once (``passes.pipeline.compile``:
shape inference, lowering, fusion, constant folding, memory planning, kernels), allocates
one buffer per storage id of the program's memory plan, and freezes the program's steps into
a flat list of ``(kernel, arguments)`` calls. A ``run`` with the same shapes only checks and
binds the feeds and walks that list: it allocates no device memory and looks nothing up per
kernel call.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import tvm

from dlsys.checks import check_dtype_device, parse_bytes
from dlsys.errors import ArgumentError, ArgumentTypeError, DtypeError, FeedError, ShapeError
from dlsys.graph import Node, Shape, find_topo_sort, short_name
from dlsys.kernels.build import SUPPORTED_DTYPES, make_target
from dlsys.ops.placeholder import Parameter
from dlsys.passes import pipeline
from dlsys.passes.dtypes import INDEX_DTYPES, index_placeholders
from dlsys.runtime.memory import (
    IN_PLACE_FEED_BYTES,
    NATIVE_IN_PLACE_FEED_BYTES,
    check_device,
    copy_pairs,
    in_place_tensor,
    may_view_foreign_memory,
    overlaps,
    private_copy,
    view,
    view_at,
)
from dlsys.runtime.native import (
    ArgumentView,
    IdCheck,
    KernelCall,
    LoweredRun,
    NativeRun,
    lower_calls,
)
from dlsys.runtime.repeat import RepeatedRun


@dataclass
class _Prepared:
    """Everything that depends on one set of feed shapes."""

    shapes: dict[Node, Shape]
    steps: list[pipeline.Step]
    plan: pipeline.MemoryPlan
    calls: list[tuple]                        # (packed function, argument tuple)
    # placeholder -> (call, argument position, shape read there: an alias may reshape it)
    feed_slots: dict[Node, list[tuple[int, int, Shape]]]
    feed_buffers: dict[Node, tvm.runtime.Tensor]
    outputs: list                 # eval node -> its tensor, or (placeholder, shape) to view
    # [start, end) addresses of every buffer the executor allocated and writes: the planned
    # storage, the feed buffers and the constant values' buffers.
    owned_ranges: list[tuple[int, int]]
    state_targets: frozenset = frozenset()    # parameters that kernels update in place
    contiguous_buffer: tvm.runtime.Tensor | None = None  # the group placed side by side
    # The calls before this index compute constant values (``constants``): they run at the
    # first run and again only when a constant changes.
    first_per_run_call: int = 0
    constant_params: tuple = ()
    constant_values: frozenset = frozenset()  # computed from constant_params alone
    constants_stale: bool = True
    constant_versions: tuple = ()
    # numpy views of the feed buffers (CPU only), made once: array feeds are copied in here.
    feed_arrays: dict = field(default_factory=dict)
    itemsize: int = 4
    # Each state's value before the last run (see ``undo_state_updates``): a buffer per
    # state, and (state tensor, buffer) pairs, numpy views on the CPU; None after a state
    # was rebound, until the next save.
    state_backups: dict = field(default_factory=dict)
    state_pairs: list | None = None
    program: pipeline.Program | None = None   # what the pipeline compiled (``program()``)
    # The calls compiled into one native function (CPU; None runs ``calls`` from Python),
    # whose buffers are the placeholders' tensors (in ``feed_buffers``' order) then
    # ``fixed``: the planned storage and the constants' buffers.
    native: NativeRun | None = None
    runs_until_native: int | None = None  # then ``native`` is compiled; None: never
    fixed: list = field(default_factory=list)
    placeholder_number: dict = field(default_factory=dict)  # its buffer's number there
    # A call made after the plan's, where a run is armed for it (``attach_update``):
    # ``(function, argument tensors, its kernel's key, index of the guarding output)``.
    update: tuple | None = None
    # Where the native call checks the ids fed (``native.IdCheck``): a view of its
    # one-element status buffer, 1 after a run it refused; None where Python checks them.
    # (A memoryview: its element is read as a Python int, where numpy's is a scalar.)
    id_status: memoryview | None = None

    def owns_memory_of(self, value) -> bool:
        """Whether ``value`` (a TVM tensor or a contiguous array of the executor's dtype)
        overlaps a buffer of the executor (e.g. a returned output fed back)."""
        if isinstance(value, np.ndarray):
            if not may_view_foreign_memory(value):
                return False
            start, size = value.ctypes.data, value.nbytes
        else:
            start, size = value.data_ptr(), tensor_bytes(value)
        return overlaps(start, start + size, self.owned_ranges)


def _overlaps_states(tensor: tvm.runtime.Tensor, placeholder: Node, prepared: _Prepared,
                     feeds: dict) -> bool:
    """Whether ``tensor``, fed for ``placeholder``, shares memory with the tensor of another
    placeholder that a kernel of this run updates in place (a state fed as an array is
    copied into a feed buffer, which ``owns_memory_of`` covers)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * prepared.itemsize
    states = [feeds[s] for s in prepared.state_targets
              if s is not placeholder and isinstance(feeds[s], tvm.runtime.Tensor)]
    return overlaps(start, end, [(t.data_ptr(), t.data_ptr() + t.numel() * prepared.itemsize)
                                  for t in states])


def tensor_bytes(tensor: tvm.runtime.Tensor) -> int:
    """The bytes a TVM tensor's elements take (ids may be int64 beside float32 values)."""
    return tensor.numel() * tvm.runtime.DataType(str(tensor.dtype)).bits // 8


# A plan is compiled into one native call at its third run: a plan run once or twice (a
# test, an evaluation at one batch size) would not repay LLVM's compile (about 40 ms per ten
# calls, znver4), a serving or training loop does at once. Plans of more calls than
# ``NATIVE_MAX_CALLS`` keep the Python loop: their kernels take milliseconds, beside which
# 0.2 us per call is noise, and their entry would take seconds to compile.
NATIVE_AFTER_RUNS = 2
NATIVE_MAX_CALLS = 64


def native_run_enabled() -> bool:
    """Whether CPU runs make one native call (``runtime.native``); ``DLSYS_NATIVE_RUN=0``
    runs the kernel calls from Python instead (the reference, and the GPU's way)."""
    return os.environ.get("DLSYS_NATIVE_RUN", "1") != "0"


def _is_integer(value) -> bool:
    """Whether a fed value holds integers (a TVM tensor or numpy array of an integer type;
    a list of Python ints too, as numpy reads it)."""
    if isinstance(value, tvm.runtime.Tensor):
        return str(value.dtype) in INDEX_DTYPES or str(value.dtype).startswith(("int", "uint"))
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        dtype = np.asarray(value).dtype
    return np.dtype(dtype).kind in "iu"


SMALL_INDEX_FEED = 64


def _check_indices(node: Node, array: np.ndarray, checks: list) -> None:
    """Refuse ids outside what the operators reading them accept: read out of bounds, an id
    past the embedding's rows would return another row's memory, silently."""
    if array.size <= SMALL_INDEX_FEED:
        # A few ids (a batch of labels): Python's min and max of a list cost 0.3 us, numpy's
        # reductions 3 us, as much as a small model's step outside its kernels.
        ids = array.ravel().tolist()
        low, high = min(ids), max(ids)
    else:
        low, high = int(array.min()), int(array.max())
    for bounds, reader in checks:
        if low >= bounds.start and high < bounds.stop:
            continue
        bad = (array < bounds.start) | (array >= bounds.stop)
        for extra in bounds.also:
            bad &= array != extra
        if bad.any():
            position = tuple(int(i) for i in np.argwhere(bad)[0])
            raise FeedError(f"feed {node.name}: id {int(array[position])} at {position} is out "
                            f"of range for {reader.name}, which takes ids "
                            f"{bounds.describe()}")


def _checked_constants(constants) -> list[Node]:
    """``Executor``'s ``constants`` argument: a list of parameters, or None."""
    if isinstance(constants, Node) or not isinstance(constants, (list, tuple, type(None))):
        raise ArgumentTypeError(f"Executor: constants must be a list of parameters, got "
                                f"{type(constants).__name__}")
    for node in constants or []:
        if not isinstance(node, Node) or not node.op.holds_value:
            raise ArgumentTypeError(f"Executor: constants must be parameters, got "
                                    f"{getattr(node, 'name', node)!r}")
    return list(constants or [])


class Executor:
    """Evaluates ``eval_node_list`` for the values in ``feed_dict``.

    ``ctx`` is the TVM device (``tvm.cpu(0)``, or ``tvm.cuda(0)`` where available);
    ``dtype`` is the element type of every value (default: that of the TVM tensors fed,
    else float32). ``plan_memory=False`` gives every node its own buffer (the reference for
    the planner's tests); ``fuse=False`` runs one kernel per node (the reference for fusion).
    ``contiguous``: evaluated nodes (e.g. every gradient) to place side by side in one buffer,
    each on a 64-byte boundary; ``contiguous_buffer()`` returns it, so one collective call
    (an allreduce) covers them all without packing copies.
    ``memory_budget``: the bytes a run may hold (an int, or a string such as ``"64MiB"``):
    the plan's working memory plus every placeholder's value, the constants computed ahead
    and ``reserved_bytes`` (an optimiser's state, which ``minimize`` counts here). Values
    are recomputed in the backward pass to fit it (``passes.recompute``); results are
    bit-identical to the run without a budget. A budget no plan reaches fails the first run
    at those shapes with a ``MemoryBudgetError`` naming the smallest budget that would do.
    ``constants``: parameters whose values this executor may treat as fixed (an inference
    session's weights). Values computed from them alone, and the packed layouts of constant
    matmul operands (``passes.prepack``), are computed at the first run and kept; they are
    computed again when a constant is fed, bound to another tensor, or changed through
    ``Parameter.assign`` or a kernel's in-place update, and after ``refresh_constants()``,
    which a caller writing into a constant's memory by other means must call.

    Feeds may be TVM tensors (used as they are, never copied: they must have the executor's
    dtype and device) or array-likes such as numpy arrays, which are converted to the dtype
    and copied into a buffer that is reused from run to run; a float64 or non-contiguous
    numpy array is therefore accepted and converted. On the CPU a numpy array of the dtype,
    contiguous, writeable and of at least ``IN_PLACE_FEED_BYTES`` (``NATIVE_IN_PLACE_FEED_BYTES``
    where the run is one native call) is not copied: the
    kernels read it where it lies (never write it; a state a kernel updates is copied), and
    the executor holds on to it until the next run. A tensor or array that shares memory
    with anything the run writes (the executor's buffers and feed buffers, as an output of
    an earlier run fed back in does, or a state a kernel updates in place) is read into a
    copy first, since the run would overwrite it before or while reading it.

    Threads: ``run`` holds a lock, so calls from several threads run one after another and
    each computes its own feeds' values. The TVM tensors it returns are the executor's
    buffers, overwritten by the next run from any thread; a thread sharing an executor
    should ask for ``convert_to_numpy_ret_vals=True``, whose copies are made under the lock.
    """

    def __init__(self, eval_node_list: list[Node], ctx=None, dtype: str | None = None,
                 plan_memory: bool = True, fuse: bool = True,
                 contiguous: list[Node] | None = None, constants: list[Node] | None = None,
                 memory_budget: int | str | None = None, reserved_bytes: int = 0):
        if isinstance(eval_node_list, Node) or not isinstance(eval_node_list, (list, tuple)):
            raise ArgumentTypeError(f"Executor: eval_node_list must be a list of Nodes, got "
                                    f"{type(eval_node_list).__name__}")
        self.eval_node_list = list(eval_node_list)
        for i, node in enumerate(self.eval_node_list):
            if not isinstance(node, Node):
                raise ArgumentTypeError(f"eval_node_list[{i}] must be a Node, got "
                                        f"{type(node).__name__}")
        self.ctx = check_device(ctx if ctx is not None else tvm.cpu(0))
        on_gpu = self.ctx.dlpack_device_type() == tvm.cuda(0).dlpack_device_type()
        self.target = "cuda" if on_gpu else "llvm"
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise DtypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.plan_memory = plan_memory
        self.fuse = fuse
        self.memory_budget = (None if memory_budget is None
                              else parse_bytes("Executor: memory_budget", memory_budget))
        self.reserved_bytes = int(reserved_bytes)
        self.contiguous = list(contiguous or [])
        for node in self.contiguous:
            if not any(node is n for n in self.eval_node_list):
                raise ArgumentError(f"Executor: contiguous lists {getattr(node, 'name', node)}, "
                                    f"which is not among the nodes it evaluates")
        self.topo_order = find_topo_sort(self.eval_node_list)
        self.placeholders = [n for n in self.topo_order if n.op.is_placeholder]
        self._placeholder_set = set(self.placeholders)
        # The placeholders every run must feed (parameters hold a value of their own).
        self._required_feeds = [p for p in self.placeholders if not p.op.holds_value]
        # Placeholders fed integer indices (token ids, class indices), each mapped to the
        # first node reading them so: fed int32 or int64 arrays, kept in that type.
        self._index_feeds = index_placeholders(self.topo_order)
        # Placeholders that are indices when fed integers (cross-entropy targets), else
        # floating-point values (probability rows).
        self._optional_index_feeds = {
            p: reader for p, reader in index_placeholders(self.topo_order, optional=True).items()
            if p not in self._index_feeds}
        # A parameter the graph does not read has nothing to fold.
        self.constants = frozenset(n for n in _checked_constants(constants)
                                   if n in self._placeholder_set)
        self._signature: tuple | None = None
        self._prepared: _Prepared | None = None
        self._bound: dict[Node, object] = {}
        # One run at a time: runs share the planned buffers and the bound argument lists.
        self._lock = threading.Lock()
        self._saved_states: list = []  # see undo_state_updates
        # The run for feeds like the last run's (``runtime.repeat``), or None.
        self.repeated_run: RepeatedRun | None = None
        self._update_limit = math.nan  # see arm_update
        # Whether the last run was armed and its plan had an update attached: it then made
        # the update exactly where the guard held.
        self.update_was_armed = False

    # ----------------------------------------------------------------- feeds
    def _check_feed_keys(self, feed_dict: dict) -> None:
        for key in feed_dict:
            if key in self._placeholder_set:
                continue
            if not isinstance(key, Node):
                raise FeedError(f"feed_dict: {key!r} is not a graph node")
            if not key.op.is_placeholder:
                raise FeedError(f"feed_dict: {key.name} is computed by the graph, not a "
                                f"placeholder; feed the placeholders it is computed from")
            evaluated = ", ".join(short_name(n) for n in self.eval_node_list)
            needed = ", ".join(p.name for p in self.placeholders) or "none"
            raise FeedError(f"feed_dict: placeholder {key.name} is not read by any node this "
                            f"executor evaluates ({evaluated}); it needs: {needed}")
        missing = [p.name for p in self._required_feeds if p not in feed_dict]
        if missing:
            raise FeedError(f"feed_dict is missing placeholder(s) {', '.join(missing)}")

    def _resolve_dtype(self, feed_dict: dict) -> str:
        if self.dtype is None:
            fed = {str(v.dtype) for p, v in feed_dict.items()
                   if isinstance(v, tvm.runtime.Tensor) and not _is_integer(v)}
            if len(fed) > 1:
                raise DtypeError(f"feed_dict mixes TVM tensors of dtypes {sorted(fed)}")
            dtype = fed.pop() if fed else "float32"
            # Checked before it is kept: a rejected dtype must not stick to later runs.
            if dtype not in SUPPORTED_DTYPES:
                raise DtypeError(f"fed TVM tensors have dtype {dtype}; dlsys supports "
                                 f"{SUPPORTED_DTYPES}")
            self.dtype = dtype
        return self.dtype

    def _feed_value(self, node: Node, value, bound: bool = False):
        """The fed value as a TVM tensor or a contiguous array of the executor's dtype.

        ``bound``: the value a parameter holds; one of another dtype or device is copied
        (converted) for the run, never refused, since the caller did not choose it here.
        """
        if node in self._index_feeds or (node in self._optional_index_feeds
                                         and _is_integer(value)):
            return self._index_value(node, value)
        if isinstance(value, tvm.runtime.Tensor):
            if str(value.dtype) == self.dtype and value.device == self.ctx:
                return value  # the run's common case: no call, no message built
            if not bound:
                check_dtype_device(value, f"feed {node.name}", self.dtype, self.ctx,
                                   "this executor runs", FeedError)
            value = value.numpy()
        if np.iscomplexobj(value):
            raise DtypeError(f"feed {node.name} is complex; dlsys computes in real "
                             f"{self.dtype}, and dropping the imaginary part would be silent")
        try:
            array = np.ascontiguousarray(value, dtype=self.dtype)
        except (TypeError, ValueError) as err:
            raise FeedError(f"feed {node.name}: cannot convert a {type(value).__name__} to a "
                            f"{self.dtype} array ({err})") from None
        if array.ndim == 0:
            raise FeedError(f"feed {node.name} is a scalar; feed an array of at least 1 dimension")
        return array

    def _index_value(self, node: Node, value):
        """Fed integer ids as an int32 or int64 TVM tensor or array (other integer types are
        widened to int64); a float or bool array is refused: an id is never rounded."""
        reader = (self._index_feeds.get(node) or self._optional_index_feeds[node]).name
        if isinstance(value, tvm.runtime.Tensor):
            if str(value.dtype) in INDEX_DTYPES and value.device == self.ctx:
                return value
            value = value.numpy()
        array = np.asarray(value)
        if array.dtype.kind not in "iu":
            raise DtypeError(f"feed {node.name}: {reader} reads it as integer ids, so feed an "
                             f"int32 or int64 array, not {array.dtype}")
        if array.ndim == 0:
            raise FeedError(f"feed {node.name} is a scalar; feed an array of at least 1 dimension")
        if str(array.dtype) not in INDEX_DTYPES:
            if array.size and array.dtype.kind == "u" and int(array.max()) > 2**63 - 1:
                raise FeedError(f"feed {node.name}: id {int(array.max())} is past int64")
            array = array.astype(np.int64)
        return np.ascontiguousarray(array)

    def _check_index_feeds(self, prepared: _Prepared, feeds: dict) -> None:
        for node, checks in prepared.program.index_checks.items():
            fed = feeds[node]
            if str(fed.dtype) not in INDEX_DTYPES:
                continue  # an optional index fed floating-point values (probability rows)
            if isinstance(fed, tvm.runtime.Tensor):
                fed = np.from_dlpack(fed) if self.target == "llvm" else fed.numpy()
            _check_indices(node, fed, checks)

    # ------------------------------------------------------------- planning
    def _prepare(self, feeds: dict) -> _Prepared:
        """Compile the graph for these feeds' shapes and index types (``passes.pipeline``),
        then allocate its buffers and freeze its kernel calls with their arguments."""
        options = pipeline.CompileOptions(
            dtype=self.dtype, target=self.target, fuse=self.fuse,
            share_memory=self.plan_memory, contiguous=tuple(self.contiguous),
            constants=self.constants, memory_budget=self.memory_budget,
            reserved_bytes=self.reserved_bytes)
        program = pipeline.compile(self.eval_node_list,
                                   {p: tuple(v.shape) for p, v in feeds.items()}, options,
                                   {p: str(feeds[p].dtype) for p in self._index_feeds}
                                   | {p: str(feeds[p].dtype) for p in self._optional_index_feeds
                                      if str(feeds[p].dtype) in INDEX_DTYPES})
        value, source, feed_buffers, owned_ranges, group, fixed = self._allocate(program)
        calls, feed_slots = self._bind_calls(program, value, source)
        shapes = program.shapes
        # The program's own nodes for the values asked for (a pass may have computed them
        # from new nodes: ``passes.batch_split``).
        outputs = [(source[n], shapes[n]) if n in source else value[n]
                   for n in program.outputs]
        hoisted = program.steps[:program.first_per_run_step]
        first_per_run_call = sum(step.alias_of is None for step in hoisted)
        # Worth compiling into one native call: a CPU plan short enough that LLVM compiles
        # it quickly, and where the calls' Python overhead weighs (``NATIVE_MAX_CALLS``).
        runs_until_native = (NATIVE_AFTER_RUNS if self.target == "llvm" and native_run_enabled()
                             and 0 < len(calls) <= NATIVE_MAX_CALLS else None)
        self._bound = dict(feed_buffers)
        feed_arrays = ({p: np.from_dlpack(t) for p, t in feed_buffers.items()}
                       if self.target == "llvm" else {})
        state_backups = {s: tvm.runtime.empty(shapes[s], self.dtype, self.ctx)
                         for s in program.state_targets}
        return _Prepared(shapes, program.steps, program.plan, calls, feed_slots, feed_buffers,
                         outputs, owned_ranges, program.state_targets, group,
                         first_per_run_call=first_per_run_call,
                         constant_params=program.constant_params,
                         constant_values=program.constant_values,
                         feed_arrays=feed_arrays, itemsize=program.plan.itemsize,
                         state_backups=state_backups, program=program,
                         runs_until_native=runs_until_native, fixed=fixed,
                         placeholder_number={p: i for i, p in enumerate(feed_buffers)})

    def _allocate(self, program: pipeline.Program) -> tuple:
        """A tensor for every value the program reads or writes, and who owns it.

        Returns ``(value, source, feed_buffers, owned_ranges, contiguous_buffer, fixed)``:
        ``value``
        maps each node to its tensor (a view of a planned storage, a feed buffer, or a
        constant's buffer); ``source`` maps each placeholder, and each value living in a
        placeholder's tensor (a view of a feed, a state updated in place), to that
        placeholder, whose tensor a run may rebind; ``owned_ranges`` are the address ranges
        of every buffer allocated here; ``fixed`` lists the planned storage and the
        constants' buffers, which no run rebinds.
        """
        shapes, plan, steps = program.shapes, program.plan, program.steps
        storage = [tvm.runtime.empty((n,), self.dtype, self.ctx) for n in plan.storage_elements]
        feed_buffers = {p: tvm.runtime.empty(shapes[p], program.dtypes[p], self.ctx)
                        for p in self.placeholders}
        value: dict[Node, object] = dict(feed_buffers)
        for node, sid in plan.storage_of.items():
            value[node] = view_at(storage[sid], plan.offset_of.get(node, 0), shapes[node])
        # Constant values live across runs: a buffer each, outside the plan.
        constant_buffers: list[tvm.runtime.Tensor] = []
        for step in steps[:program.first_per_run_step]:
            if step.alias_of is None:
                for out in step.outputs:
                    value[out] = tvm.runtime.empty(shapes[out], self.dtype, self.ctx)
                    constant_buffers.append(value[out])
        # An alias of a placeholder is that placeholder's (re-bindable) tensor, viewed with
        # the alias's shape where it reshapes.
        source = {p: p for p in self.placeholders}
        for step in steps:
            if step.alias_of is not None and step.alias_of in source:
                source[step.output] = source[step.alias_of]
                value[step.output] = view(value[step.alias_of], shapes[step.output])
            elif step.alias_of is not None and step.alias_of in program.constant_values:
                value[step.output] = view(value[step.alias_of], shapes[step.output])
            elif step.writes_state is not None:
                # The kernel writes the new state into the state's own (bound) tensor.
                source[step.output] = step.writes_state
                value[step.output] = value[step.writes_state]
        owned_ranges = [(t.data_ptr(), t.data_ptr() + tensor_bytes(t))
                        for t in (*storage, *feed_buffers.values(), *constant_buffers)]
        group = storage[plan.contiguous_storage] if plan.contiguous_storage is not None else None
        return value, source, feed_buffers, owned_ranges, group, storage + constant_buffers

    def _bind_calls(self, program: pipeline.Program, value: dict, source: dict
                    ) -> tuple[list[tuple], dict[Node, list[tuple[int, int, Shape]]]]:
        """The run's kernel calls, ``(packed function, arguments)`` in order, and each
        placeholder's argument slots ``(call, position, shape read there)``, which ``_rebind``
        points at the tensor fed."""
        calls: list[tuple] = []
        feed_slots: dict[Node, list[tuple[int, int, Shape]]] = {p: [] for p in self.placeholders}
        for step, kernel in zip(program.steps, program.kernels):
            if kernel is None:
                continue  # an alias: its value is its input's memory
            args = [value[i] for i in step.inputs] + [value[out] for out in step.outputs]
            for position, arg_node in enumerate(step.inputs + step.outputs):
                if arg_node in source:
                    feed_slots[source[arg_node]].append((len(calls), position,
                                                         program.shapes[arg_node]))
            calls.append((kernel.func, tuple(args)))
        return calls, feed_slots

    def _rebind(self, prepared: _Prepared, placeholder: Node, tensor) -> None:
        """Point every argument slot of ``placeholder`` at ``tensor`` (only when it changed)."""
        calls = prepared.calls
        for call_index, position, shape in prepared.feed_slots[placeholder]:
            func, args = calls[call_index]
            arg = view(tensor, shape)
            calls[call_index] = (func, args[:position] + (arg,) + args[position + 1:])
        if prepared.native is not None:
            prepared.native.rebind(prepared.placeholder_number[placeholder], tensor)
        self._bound[placeholder] = tensor
        if placeholder in prepared.state_targets:
            prepared.state_pairs = None  # the save must read the new tensor

    # ------------------------------------------------------------------ run
    def run(self, feed_dict: dict, convert_to_numpy_ret_vals: bool = False) -> list:
        """Values of ``eval_node_list`` for ``feed_dict``: TVM tensors owned by the executor
        (overwritten by the next run), or numpy copies when asked."""
        if not isinstance(feed_dict, dict):
            raise FeedError(f"feed_dict must be a dict, got {type(feed_dict).__name__}")
        limit, self._update_limit = self._update_limit, math.nan  # armed for this run only
        repeat = self.repeated_run
        if repeat is not None:  # the common case first
            results = repeat(feed_dict, limit, convert_to_numpy_ret_vals)
            if results is not None:
                return results if convert_to_numpy_ret_vals else list(results)
        # Not ``with self._lock``: with the caches cold after the last run's kernels, the
        # context manager's protocol costs 0.3 us more than the two calls.
        self._lock.acquire()
        try:
            self.update_was_armed = False
            return self._run(feed_dict, convert_to_numpy_ret_vals, limit)
        finally:
            self._lock.release()

    def _make_calls(self, prepared: _Prepared, first: int, limit: float) -> None:
        """The plan's kernel calls from number ``first`` on, then the attached update where
        this run was armed for it (``limit`` is not NaN) and its guard holds
        (``attach_update``). ``RepeatedRun`` makes its native arm itself (a call less in
        the hottest path): a change here goes there too."""
        self.update_was_armed = limit == limit and prepared.update is not None
        if prepared.native is not None:
            prepared.native.run(first, limit)
            return
        for func, args in itertools.islice(prepared.calls, first, None):
            func(*args)
        if prepared.update is not None and limit == limit:
            func, args, _, guard = prepared.update
            out = prepared.outputs[guard]
            value = float((np.from_dlpack(out) if self.target == "llvm" else out.numpy())
                          .reshape(-1)[0])
            if math.isfinite(value) and value <= limit:
                func(*args)

    # ---------------------------------------------------------- attached update
    def attach_update(self, func, args: tuple, key: str, guard: int = 0) -> None:
        """Make ``func(*args)`` (a kernel updating tensors in place: an optimiser's step)
        part of this plan's run, after its calls, in the same native call: made at a run
        armed by ``arm_update(limit)`` where the first element of evaluated node number
        ``guard`` (the loss) is then finite and at most ``limit``; never at other runs.
        ``key`` names the kernel's code (``Kernel.key``). A training step thus makes one
        crossing into native code, and a step its check refuses updates nothing. The
        update belongs to the plan of the last feed shapes: a new plan has none."""
        prepared = self._require_prepared()
        if not isinstance(self.eval_node_list[guard], Node) or not all(
                isinstance(a, tvm.runtime.Tensor) for a in args):
            raise ArgumentTypeError("Executor.attach_update: args must be TVM tensors")
        prepared.update = (func, tuple(args), key, guard)
        if prepared.native is not None:
            # Compiled again with the update, at the next run (from the disk cache later).
            prepared.native, prepared.runs_until_native = None, 0

    def update_attached(self) -> bool:
        """Whether the plan of the last feed shapes has an update attached."""
        prepared = self._prepared
        return prepared is not None and prepared.update is not None

    def arm_update(self, limit: float) -> None:
        """Let the next run make the attached update where its guard is finite and at most
        ``limit`` (``math.inf``: wherever finite). Only the next run: a run not armed, from
        any caller, never updates. A run of new feed shapes makes a new plan, which has no
        update attached: ``update_was_armed`` says after the run whether it had one."""
        self._update_limit = float(limit)

    def _count_run(self, prepared: _Prepared) -> None:
        """Count a run of the plan; at ``NATIVE_AFTER_RUNS``, compile its calls into one
        native call (``runtime.native``) over the tensors bound now."""
        if prepared.runs_until_native > 0:
            prepared.runs_until_native -= 1
            return
        prepared.runs_until_native = None
        lowered = self.lowered_run()
        identities = [k.key or str(id(k)) for k in prepared.program.kernels if k is not None]
        functions, calls, buffers = lowered.functions, lowered.calls, lowered.buffers
        guard = None
        if prepared.update is not None:
            # The update's arguments are buffers of their own, after the plan's.
            func, args, key, guard_output = prepared.update
            views = tuple(ArgumentView(len(buffers) + i, 0, tuple(int(d) for d in a.shape),
                                       str(a.dtype)) for i, a in enumerate(args))
            functions, identities = [*functions, func], [*identities, key]
            calls, buffers = [*calls, KernelCall("", views)], [*buffers, *args]
            guard = lowered.outputs[guard_output]
        id_checks = []
        for placeholder, checks in prepared.program.index_checks.items():
            tensor = self._bound[placeholder]
            if str(tensor.dtype) in INDEX_DTYPES:
                id_checks.append(IdCheck(
                    prepared.placeholder_number[placeholder], math.prod(tensor.shape),
                    tuple((b.start, b.stop, tuple(b.also)) for b, _ in checks)))
        status = None
        if id_checks:
            status_tensor = tvm.runtime.empty((1,), "int32", self.ctx)
            status, buffers = len(buffers), [*buffers, status_tensor]
            prepared.id_status = np.from_dlpack(status_tensor).data
        prepared.native = NativeRun(functions, identities, calls, buffers,
                                    make_target(self.target), guard, id_checks, status)

    def _remember_feeds(self, prepared: _Prepared, feed_dict: dict, results: list) -> None:
        """Make the run that repeats this one (``repeated_run``), where it can: every feed an
        array (CPU), none a constant."""
        self.repeated_run = None
        slots = []
        viewed = {out[0] for out in prepared.outputs if isinstance(out, tuple)}
        for placeholder, value in feed_dict.items():
            array = prepared.feed_arrays.get(placeholder)
            if placeholder in self.constants or array is None or not isinstance(value, np.ndarray):
                return
            # An output viewing a feed read where it lies would have to be remade at every
            # run, and a kernel updating it in place would write into the caller's array.
            may_read_in_place = (placeholder not in viewed
                                 and placeholder not in prepared.state_targets
                                 and (prepared.native is not None
                                      or prepared.runs_until_native is not None))
            buffer = prepared.feed_buffers[placeholder]
            if self._bound[placeholder] is buffer:
                slots.append((placeholder, value.shape, array.dtype, array,
                              buffer if may_read_in_place else None))
            elif may_read_in_place:  # bound where it lay (``_bind_feeds``)
                slots.append((placeholder, value.shape, array.dtype, None, None))
            else:
                return
        index_checks = tuple((number, placeholder, prepared.program.index_checks[placeholder])
                             for number, (placeholder, _, dtype, _, _) in enumerate(slots)
                             if placeholder in prepared.program.index_checks
                             and str(dtype) in INDEX_DTYPES)
        self.repeated_run = RepeatedRun(self, prepared, tuple(slots), list(results),
                                        [np.from_dlpack(r) for r in results], index_checks,
                                        _check_indices)

    def _run(self, feed_dict: dict, convert_to_numpy_ret_vals: bool, limit: float) -> list:
        """``run`` under the lock, where the repeated-feeds path did not apply: check the
        feeds, compile for new shapes, bind, call."""
        self.repeated_run = None
        self._saved_states = []  # a run that fails before its save leaves none to undo
        self._check_feed_keys(feed_dict)
        if self.dtype is None:
            # Parameters bind the tensor they hold unless the caller feeds another value.
            self._resolve_dtype({p: feed_dict[p] if p in feed_dict else p.data
                                 for p in self.placeholders})
        feeds, signature, constant_fed = self._gather_feeds(feed_dict)
        if signature != self._signature:
            self._prepared = self._prepare(feeds)
            self._signature = signature
        prepared = self._prepared
        if self._index_feeds or self._optional_index_feeds:
            self._check_index_feeds(prepared, feeds)
        if prepared.state_targets:
            self._check_state_feeds(prepared, feeds, feed_dict)
        refresh = prepared.constants_stale
        if prepared.constant_params:
            versions = tuple(p.version for p in prepared.constant_params)
            refresh = refresh or constant_fed or versions != prepared.constant_versions
        # Binding first: a constant bound to another tensor must be computed again.
        refresh = self._bind_feeds(prepared, feeds) or refresh
        if prepared.state_targets:
            self._save_states(prepared)
        first = 0 if refresh else prepared.first_per_run_call
        if prepared.runs_until_native is not None:
            self._count_run(prepared)
        self._make_calls(prepared, first, limit)
        if prepared.constant_params:
            prepared.constants_stale = False
            prepared.constant_versions = versions
        # Executors holding a state as a constant recompute from it.
        Parameter.step_versions(prepared.state_targets)
        results = [view(self._bound[out[0]], out[1]) if isinstance(out, tuple) else out
                   for out in prepared.outputs]
        if self.target == "llvm":
            self._remember_feeds(prepared, feed_dict, results)
        if convert_to_numpy_ret_vals:
            if self.target == "llvm":  # a copy through numpy: TVM's numpy() costs 6 us more
                return [np.from_dlpack(r).copy() for r in results]
            return [r.numpy() for r in results]
        return results

    def _gather_feeds(self, feed_dict: dict) -> tuple[dict, tuple, bool]:
        """Each placeholder's value for this run (fed, or the tensor a parameter holds),
        checked and converted; the feed shapes (the plan's key); whether a constant was fed.
        A value in the executor's own memory is copied here, before anything writes it."""
        bound, prepared = self._bound, self._prepared
        feeds = {}
        shapes = []
        constant_fed = False
        for placeholder in self.placeholders:
            if placeholder in feed_dict:
                constant_fed = constant_fed or placeholder in self.constants
                fed = self._feed_value(placeholder, feed_dict[placeholder])
                # An array numpy allocated (base None) or the tensor bound last run is not
                # the executor's: the check costs 50 ns for them.
                if (prepared is not None and (fed.base is not None if isinstance(fed, np.ndarray)
                                              else fed is not bound[placeholder])
                        and prepared.owns_memory_of(fed)):
                    # The executor's own memory (an output fed back, or a view of one): read
                    # now, before any feed buffer is copied into or any kernel writes it.
                    # (A new plan's buffers cannot overlap it: it holds its memory alive.)
                    fed = private_copy(fed)
                shapes.append(tuple(fed.shape))
                if placeholder in self._index_feeds or placeholder in self._optional_index_feeds:
                    shapes.append(str(fed.dtype))  # int32 and int64 ids compile apart
                feeds[placeholder] = fed
                continue
            data = placeholder.data
            if data is bound.get(placeholder):
                # Still the tensor bound at the last run, checked then (dtype, device, no
                # overlap with the executor's buffers; a new plan clears the bindings): its
                # shape is the plan's.
                shapes.append(prepared.shapes[placeholder])
                feeds[placeholder] = data
                continue
            fed = self._feed_value(placeholder, data, bound=True)
            if (prepared is not None and placeholder not in prepared.state_targets
                    and prepared.owns_memory_of(fed)):
                fed = private_copy(fed)  # as above (a state must stay its own tensor)
            shapes.append(tuple(fed.shape))
            feeds[placeholder] = fed
        return feeds, tuple(shapes), constant_fed

    def _check_state_feeds(self, prepared: _Prepared, feeds: dict, feed_dict: dict) -> None:
        """Refuse a state updated in place whose parameter holds a tensor the run would have
        to convert: the update would go to the copy."""
        for state in prepared.state_targets:
            if state not in feed_dict and feeds[state] is not state.data:
                # A converted copy would take the update, and the parameter would never see it.
                raise DtypeError(f"{state.name} is updated in place by this graph, so it must "
                                 f"hold a {self.dtype} tensor on {self.ctx}, not "
                                 f"{state.data.dtype} on {state.data.device}")

    def _bind_feeds(self, prepared: _Prepared, feeds: dict) -> bool:
        """Point the kernels' arguments at this run's feeds (copying those that must be
        copied into the feed buffers); whether a constant value's input was rebound, so that
        the constant values must be computed again."""
        bound = self._bound
        refresh = False
        in_place_bytes = IN_PLACE_FEED_BYTES
        if prepared.native is not None or prepared.runs_until_native is not None:
            in_place_bytes = min(in_place_bytes, NATIVE_IN_PLACE_FEED_BYTES)
        for placeholder, fed in feeds.items():
            if fed is bound[placeholder]:
                continue  # bound and checked at an earlier run
            if (isinstance(fed, np.ndarray) and fed.nbytes >= in_place_bytes
                    and self.target == "llvm" and placeholder not in prepared.state_targets):
                # Read where it lies, not copied (a kernel updating it in place would write
                # into the caller's array: such a feed is copied).
                fed = in_place_tensor(fed)
            if isinstance(fed, np.ndarray) or (prepared.state_targets and _overlaps_states(
                    fed, placeholder, prepared, feeds)):
                # An array, or a tensor sharing memory with a state a kernel updates in place
                # (read after the update otherwise): copied (no kernel has run yet).
                buffer = prepared.feed_buffers[placeholder]
                array_view = prepared.feed_arrays.get(placeholder)
                if isinstance(fed, np.ndarray) and array_view is not None:
                    # Through numpy: TVM's copyfrom costs 6 us more per call (znver4), as
                    # much as a small model's kernels.
                    np.copyto(array_view, fed)
                else:
                    buffer.copyfrom(fed)
                fed = buffer
            if bound[placeholder] is not fed:
                self._rebind(prepared, placeholder, fed)
                refresh = refresh or placeholder in prepared.constant_values
        return refresh

    # --------------------------------------------------------------- states
    # A run saves every state it updates in place (batch norm's running statistics, dropout
    # seeds), so that a caller refusing the run's result can put them back. Saving before the
    # kernels and restoring on refusal, rather than staging the updates and committing them on
    # acceptance, costs the same copy per run (about 0.5 us for a (C,) statistic, nothing for
    # a graph without states, such as every inference graph) and keeps a plain ``run`` exactly
    # as it was: a caller who never commits would otherwise lose every update.
    def _save_states(self, prepared: _Prepared) -> None:
        self._saved_states = []  # a save that fails leaves none to undo
        if not prepared.state_targets:
            return
        pairs = prepared.state_pairs
        if pairs is None:
            pairs = [(self._bound[s], prepared.state_backups[s]) for s in prepared.state_targets]
            if self.target == "llvm":  # np.copyto costs less than TVM's copyfrom
                pairs = [(np.from_dlpack(t), np.from_dlpack(b)) for t, b in pairs]
            prepared.state_pairs = pairs
        copy_pairs(pairs, to_second=True)
        self._saved_states = pairs

    def undo_state_updates(self) -> None:
        """Put back every state the last run updated in place (batch norm's running
        statistics, the dropout layers' seeds) as it was before that run, so that a caller
        refusing the run's result (a training step whose loss is not finite) leaves the model
        as it found it, and a retry of the same batch draws the same dropout masks. Only the
        last run is undone; a second call changes nothing more."""
        with self._lock:
            if self._saved_states:
                copy_pairs(self._saved_states, to_second=False)
                # Executors holding a state as a constant recompute from it.
                Parameter.step_versions(self._prepared.state_targets)

    def refresh_constants(self) -> None:
        """Compute the constant values again at the next run (after writing into a constant
        parameter's memory other than through ``Parameter.assign``)."""
        with self._lock:
            if self._prepared is not None:
                self._prepared.constants_stale = True

    # -------------------------------------------------------------- inspect
    def _require_prepared(self) -> _Prepared:
        if self._prepared is None:
            raise ShapeError("the executor has no plan yet: call run() first, so that the "
                             "feed shapes are known")
        return self._prepared

    def program(self) -> pipeline.Program:
        """The compiled program for the last feed shapes run (``print`` it for its table of
        steps and memory plan)."""
        return self._require_prepared().program

    def memory_stats(self) -> dict[str, int]:
        """The memory plan's figures for the last feed shapes run.

        ``naive_bytes``: one buffer per node output; ``planned_bytes``: what the plan
        allocates; ``buffers``: how many; ``peak_live_bytes``: the largest total of values
        alive at one step, the lower bound for any plan without recomputation. Feeds are not
        counted in these; ``held_bytes`` is what a run holds besides the plan (every
        placeholder's value, the constants computed ahead, ``reserved_bytes``), the part of
        a ``memory_budget`` the plan cannot touch.
        """
        prepared = self._require_prepared()
        return {**prepared.plan.stats(), "held_bytes": prepared.program.fixed_bytes}

    def storage_table(self) -> list[tuple[str, Shape, int | None, str]]:
        """``(node, shape, storage id, how)`` for every step, in run order (for debugging)."""
        prepared = self._require_prepared()
        rows = []
        for step in prepared.steps:
            node = step.output
            how = ("alias" if step.alias_of is not None
                   else "in place" if node in prepared.plan.inplace_steps else "")
            if step.anchor is not None:
                how = "fused matmul+" + "+".join(kind for kind, *_ in step.epilogue)
            if node in prepared.constant_values:
                how = "constant, computed ahead of the runs" + (f"; {how}" if how else "")
            for extra in step.extra_outputs:
                rows.append((extra.name, prepared.shapes[extra], prepared.plan.storage_of[extra],
                             "fused into the next row's kernel"))
            rows.append((node.name, prepared.shapes[node], prepared.plan.storage_of.get(node), how))
        return rows

    def contiguous_buffer(self) -> tvm.runtime.Tensor:
        """One flat tensor holding the ``contiguous`` nodes' values side by side, in order
        (for the last feed shapes run): a view of the very memory the kernels write, so one
        collective call (an allreduce of every gradient) covers them all."""
        prepared = self._require_prepared()
        if prepared.contiguous_buffer is None:
            raise ArgumentError("Executor: no contiguous nodes were asked for")
        return prepared.contiguous_buffer

    def lowered_run(self) -> LoweredRun:
        """The last feed shapes' run as data (``runtime.native.LoweredRun``): every buffer
        it touches (the tensors bound now), each kernel call as views of them, and where
        each evaluated value lies; what ``dlsys.compile`` writes into a library."""
        prepared = self._require_prepared()
        return lower_calls(prepared.calls, prepared.feed_slots,
                           {p: self._bound[p] for p in prepared.feed_buffers}, prepared.fixed,
                           prepared.outputs, len(prepared.plan.storage_elements),
                           prepared.first_per_run_call)

    @property
    def kernel_calls(self) -> int:
        """Kernel calls per run for the last feed shapes."""
        return len(self._require_prepared().calls)
