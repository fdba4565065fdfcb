"""Values from outside the graph: placeholders fed at every run (inputs, labels) and
parameters, which hold their own tensor and are bound by the executor."""

from __future__ import annotations

import weakref

import numpy as np
import tvm

from dlsys.errors import ArgumentTypeError, DtypeError, ShapeError
from dlsys.graph import Node, Op

PARAMETER_DTYPES = ("float32", "float64")


class PlaceholderOp(Op):
    name = "Placeholder"
    is_placeholder = True

    def __call__(self, name: str) -> Node:
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(f"a placeholder's name must be a non-empty string, "
                                    f"got {name!r}")
        return Node(self, [], name=name)

    def infer_shape(self, node, input_shapes):
        raise ShapeError(f"placeholder {node.name} has no value: feed it in feed_dict")

    def gradient(self, node, output_grad):
        return []


class ParameterOp(PlaceholderOp):
    name = "Parameter"
    holds_value = True


placeholder_op = PlaceholderOp()
parameter_op = ParameterOp()


def Variable(name: str) -> Node:  # noqa: N802 - the course API's name
    """A placeholder: a value fed through ``feed_dict`` at every run."""
    return placeholder_op(name)


class UpdateCount:
    """How many times a set of parameters was updated together, in place (an optimiser's
    steps): one count shared by them all and stepped once per update, so that a training
    step does not touch each parameter to say it changed (with the caches cold after the
    kernels, 0.15-0.2 us per parameter). Each parameter's ``version`` adds it in."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = 0


class ParameterChanges:
    """Every rebinding of any parameter's ``data``, and every change of any ``version``,
    counted apart: an executor whose last run saw the same counts knows that no parameter
    was rebound since (and, where it holds constants, that none changed), without looking
    at each of them (``runtime.repeat``). An optimiser's update steps ``version_steps``,
    which matters only to executors holding parameters as constants. (One object, not
    attributes of ``Parameter``: writing a class's attribute invalidates the lookups cached
    for the class, which a training step would pay at every update.)"""

    __slots__ = ("rebinds", "version_steps")

    def __init__(self) -> None:
        self.rebinds = 0
        self.version_steps = 0


PARAMETER_CHANGES = ParameterChanges()


class Parameter(Node):
    """A graph value that holds its own data: the executor binds ``data`` (a TVM tensor)
    wherever the parameter appears, so it is never fed by hand.

    Optimisers update ``data`` in place; ``assign`` copies new values in (checking the
    shape), so executors that bound the tensor keep reading the same memory.
    """

    # ``version`` counts changes of ``data`` made through dlsys (``assign``, a kernel's
    # in-place update), so an executor holding the parameter as a constant sees them:
    # ``_edits`` of this parameter alone plus the steps of each ``UpdateCount`` it is in.
    __slots__ = ("data", "_edits", "_update_counts")

    @property
    def version(self) -> int:
        """How many changes of ``data``'s values dlsys made: a number that only grows."""
        return self._edits + sum(count.steps for count in self._update_counts)

    @staticmethod
    def step_versions(parameters) -> None:
        """Count one change of each parameter (an in-place update by a kernel)."""
        if not parameters:
            return
        for parameter in parameters:
            _set_edits(parameter, parameter._edits + 1)  # 0.4 us less than setattr's
        PARAMETER_CHANGES.version_steps += 1

    @staticmethod
    def update_count(parameters, owner) -> UpdateCount:
        """A count in every parameter's ``version``, for ``step_update_count`` to count an
        update of them all at once, for as long as ``owner`` (an optimiser) lives: then its
        steps stay in each parameter's own count, so that a program making optimisers over
        the same parameters again and again does not grow their lists."""
        count = UpdateCount()
        for parameter in parameters:
            parameter._update_counts.append(count)
        weakref.finalize(owner, _retire_update_count, tuple(parameters), count).atexit = False
        return count

    @staticmethod
    def step_update_count(count: UpdateCount) -> None:
        """Count one change of each parameter ``count`` was made for."""
        count.steps += 1
        PARAMETER_CHANGES.version_steps += 1

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name == "data":
            PARAMETER_CHANGES.rebinds += 1
        else:
            PARAMETER_CHANGES.version_steps += 1

    def __init__(self, data, name: str = "param", device=None):
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(f"a parameter's name must be a non-empty string, "
                                    f"got {name!r}")
        super().__init__(parameter_op, [], name=name)
        array = data.numpy() if isinstance(data, tvm.runtime.Tensor) else np.asarray(data)
        if array.dtype.name not in PARAMETER_DTYPES:
            if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
                raise DtypeError(f"parameter {name}: data must be real numbers, got "
                                 f"{array.dtype}")
            array = array.astype(np.float32)
        if array.ndim == 0 or 0 in array.shape:
            raise ShapeError(f"parameter {name}: needs at least one dimension and no empty "
                             f"ones, got shape {array.shape}")
        self.data = tvm.runtime.tensor(np.ascontiguousarray(array), device or tvm.cpu(0))
        self._edits = 0
        self._update_counts: list[UpdateCount] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> str:
        return str(self.data.dtype)

    def numpy(self) -> np.ndarray:
        """A copy of the current value."""
        return self.data.numpy()

    def assign(self, value) -> None:
        """Copy ``value`` (an array of this parameter's shape) into ``data``, in place."""
        array = value.numpy() if isinstance(value, tvm.runtime.Tensor) else np.asarray(value)
        if tuple(array.shape) != self.shape:
            raise ShapeError(f"parameter {self.name}: expected shape {self.shape}, got "
                             f"{tuple(array.shape)}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise DtypeError(f"parameter {self.name}: values must be real numbers, got "
                             f"{array.dtype}")
        self.data.copyfrom(np.ascontiguousarray(array, dtype=self.dtype))
        self._edits += 1


# The slot's own setter: past ``Parameter.__setattr__``, which counts a step of its own.
_set_edits = Parameter.__dict__["_edits"].__set__


def _retire_update_count(parameters: tuple, count: UpdateCount) -> None:
    """Move ``count``'s steps into each parameter's own: its versions stay the same."""
    for parameter in parameters:
        _set_edits(parameter, parameter._edits + count.steps)
        parameter._update_counts.remove(count)
