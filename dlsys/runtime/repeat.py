"""The run again, for feeds like the last run's: the executor's common case.

A serving loop or a training loop feeds the same placeholders arrays of the same shapes and
dtypes, rebinds no parameter and changes none the executor holds as a constant. Everything
the executor's full path decided then stands (the plan, the bindings, the constants), so
the run only checks each fed array, copies it into its buffer (or hands it to the native
call where it lies) and makes the calls: its cost grows with the feeds, not with the
parameters.

A small model's kernels take microseconds, and after them the caches hold their data, not
Python's: every object this Python reads comes from memory (0.2-0.5 us for a numpy
attribute, as much again for each function called). So the run is one call made once per
plan and feeds (``RepeatedRun``), holding what it reads in one tuple, rather than methods
walking the executor's and the plan's objects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlsys.errors import FeedError
from dlsys.ops.placeholder import PARAMETER_CHANGES, Parameter
from dlsys.runtime.memory import in_place_tensor, may_view_foreign_memory


class RepeatedRun:
    """``run(feed_dict, limit, copies=False)``: the run of an executor's plan for feeds like
    the last one's, returning the evaluated tensors (numpy copies of them with
    ``copies``), or None (to take the full path) where a feed differs. ``limit`` arms the
    attached update (``Executor.arm_update``); NaN leaves it unmade.

    ``slots``: per fed placeholder, ``(placeholder, shape, dtype, feed buffer as numpy,
    feed buffer as a TVM tensor)``. With None for the buffer, the array is handed to the
    native call where it lies (the last run's was: ``NATIVE_IN_PLACE_FEED_BYTES``);
    otherwise it is copied into its buffer, or, where the native call may read it in place
    (the TVM tensor is given), the same array fed twice in a row is read where it lies from
    then on: a serving loop's input buffer, or a benchmark's, is then neither copied nor
    wrapped again. ``results``: the tensors every run returns, ``result_arrays`` numpy
    views of them. ``index_checks``: ``(slot number, placeholder, bounds)`` of each feed of
    integer ids, checked by ``check_indices`` where the native call does not. A run holds
    the executor's lock, and returns None once the executor has made another
    ``RepeatedRun`` (another thread's run of new shapes).
    """

    __slots__ = ("_held", "_expected")

    def __init__(self, executor, prepared, slots: tuple, results: list, result_arrays: list,
                 index_checks: tuple, check_indices: Callable):
        # Each slot with its buffer's number in the native call, its element's bytes, and
        # ``[array, native run]``: the array fed last, and the native run reading it where
        # it lies (False where that array was copied).
        numbered = tuple((*slot, prepared.placeholder_number[slot[0]], slot[2].itemsize,
                          [None, False]) for slot in slots)
        # All a run reads, in one tuple: with the caches cold, one object to fetch.
        self._held = (executor, prepared, numbered, results, result_arrays, index_checks,
                      check_indices, prepared.first_per_run_call, prepared.state_targets,
                      prepared.constant_params)
        # Parameter's counts when the run was made: a change since means the full path.
        self._expected = [PARAMETER_CHANGES.rebinds, PARAMETER_CHANGES.version_steps]

    def __call__(self, feed_dict: dict, limit: float, copies: bool = False) -> list | None:
        (executor, prepared, numbered, results, result_arrays, index_checks, check_indices,
         first, state_targets, constant_params) = self._held
        changes, expected, lock = PARAMETER_CHANGES, self._expected, executor._lock
        lock.acquire()
        try:
            if (executor.repeated_run is not self or changes.rebinds != expected[0]
                    or len(feed_dict) != len(numbered)
                    or (constant_params and (prepared.constants_stale
                                             or changes.version_steps != expected[1]))):
                return None
            native = prepared.native
            sorted_feeds = _sort_feeds(feed_dict, numbered, prepared, native)
            if sorted_feeds is None:
                return None
            arrays, in_place, copied = sorted_feeds
            if native is None or prepared.id_status is None:
                for number, placeholder, checks in index_checks:
                    check_indices(placeholder, arrays[number], checks)
            for placeholder, number, buffer, own, last, value in copied:
                buffer[...] = value  # numpy's copyto costs 0.2 us more per call
                if last[1]:  # a native call read an array in place: back to the buffer
                    native.rebind(number, own)
                    executor._bound[placeholder] = own
                    last[1] = False
                if last[0] is not value:
                    last[0], last[1] = value, False
            for placeholder, number, tensor, last, value in in_place:
                # Only the native call runs from here: the Python loop's argument tuples
                # keep the tensor the full path bound (``prepared.native`` is never dropped
                # but by ``attach_update``, whose next run takes the full path).
                native.rebind(number, tensor)
                executor._bound[placeholder] = tensor  # held until the next rebinding
                last[0], last[1] = value, native
            if state_targets or executor._saved_states:
                executor._save_states(prepared)  # what the run changes, or nothing
            if native is None:  # the first runs, a GPU, or a plan of many calls
                if prepared.runs_until_native is not None:
                    executor._count_run(prepared)
                executor._make_calls(prepared, first, limit)
            else:  # ``Executor._make_calls``'s native arm, inlined: one call less per run
                executor.update_was_armed = limit == limit and prepared.update is not None
                native.run(first, limit)
                status = prepared.id_status
                if status is not None and status[0]:
                    _refuse_ids(index_checks, arrays, check_indices)
            if state_targets:
                Parameter.step_versions(state_targets)
            expected[0], expected[1] = changes.rebinds, changes.version_steps
            if copies:  # under the lock: another thread's run would overwrite them
                return [array.copy() for array in result_arrays]
            return results
        finally:
            lock.release()


def _refuse_ids(index_checks: tuple, arrays: list, check_indices: Callable) -> None:
    """After the native call refused an id (and made no call): Python finds and names it."""
    for number, placeholder, checks in index_checks:
        check_indices(placeholder, arrays[number], checks)
    raise FeedError("feed_dict: an id is out of range for the operator reading it")


# A slot's ``last[1]`` where its last array, fed twice, could not be read in place
# (read-only, misaligned): copied while it is fed again, never wrapped in vain. False as a
# condition, as False is (no native call reads an array in place), and never a native run.
_NOT_IN_PLACE = 0


def _sort_feeds(feed_dict: dict, numbered: tuple, prepared, native) -> tuple | None:
    """``(arrays, in_place, copied)`` for a run of ``RepeatedRun``: each slot's array; the
    arrays to hand to the native call where they lie, ``(placeholder, buffer number,
    tensor, last, array)``; those to copy into their buffers, ``(placeholder, buffer
    number, buffer, its tensor, last, array)``. None where a feed differs from the last
    run's (the full path takes it). Changes nothing but the slots of refused views."""
    arrays, in_place, copied = [], [], []
    for placeholder, shape, dtype, buffer, own, number, itemsize, last in numbered:
        value = feed_dict.get(placeholder)
        # numpy's dtypes of native byte order are one object each: another dtype equal to
        # it (rare) merely takes the full path.
        if type(value) is not np.ndarray or value.shape != shape or value.dtype is not dtype:
            return None
        arrays.append(value)
        if value is last[0] and native is last[1] and value.flags.c_contiguous:
            # Read where it lies, as at the last run: an ndarray's memory is its own for
            # life (but after numpy's unsafe ``resize(refcheck=False)``), its shape and
            # dtype were checked above, its strides (which numpy 2.4 still lets a caller
            # set) here; and it was found not to view the executor's own memory then.
            continue
        # An array numpy allocated, or a slice of one (a loop's batch of its data set), views
        # no buffer of the executor: told apart by one call, without ``owns_memory_of``'s.
        if value.base is not None and may_view_foreign_memory(value) \
                and prepared.owns_memory_of(value):
            return None  # a view of the executor's own buffers: read first by the full path
        if buffer is None or (value is last[0] and last[1] is False and own is not None
                              and native is not None):
            # Its DLPack view: 1.6-1.9 us with the caches cold, a copy of 8-16 KiB.
            tensor = None if native is None else in_place_tensor(value, itemsize)
            if tensor is not None and tensor is not value:
                in_place.append((placeholder, number, tensor, last, value))
                continue
            if buffer is None:
                return None  # copied by the full path (read-only, strided...)
            last[1] = _NOT_IN_PLACE
        copied.append((placeholder, number, buffer, own, last, value))
    return arrays, in_place, copied
