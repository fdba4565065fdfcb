"""What every optimiser shares: its parameters, one fused update kernel, runtime scalars,
state tensors with a checked ``state_dict``, and ``minimize``.

An optimiser subclass declares its kernel kind (``dlsys.kernels.optim``), the names
of its runtime coefficients and of its per-parameter state; this class allocates the state
next to the parameters, builds the kernel once and binds its arguments. A step is one call
of the compiled kernel, which also counts the steps on the device: nothing is copied from
the host unless the learning rate changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import tvm

from dlsys.checks import check_constant, check_dtype_device, parse_bytes, state_arrays
from dlsys.errors import ArgumentError, ArgumentTypeError, DtypeError, ShapeError
from dlsys.graph import Node
from dlsys.kernels.build import SUPPORTED_DTYPES
from dlsys.kernels.common.compute import ACCUMULATOR
from dlsys.kernels.registry import KernelSpec
from dlsys.ops.placeholder import Parameter
from dlsys.optim.step import TrainStep, check_max_grad_norm

# The device keeps the step count in the parameters' dtype; float32 counts every integer
# exactly up to 2**24, and a state_dict beyond it could not be restored exactly.
MAX_STEPS = 2**24


def check_rate(owner: str, name: str, value, dtype: str, allow_zero: bool = False) -> float:
    """A finite number that stays positive (or zero, if allowed) once rounded to ``dtype``."""
    number = check_constant(f"{owner}: {name}", value)
    rounded = float(np.array(number, dtype=dtype))
    if rounded < 0 or (rounded == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        detail = f" (it rounds to {rounded} in {dtype})" if number > 0 else ""
        raise ArgumentError(f"{owner}: {name} must be {bound}, got {value!r}{detail}")
    return number


def check_nonnegative(owner: str, name: str, value) -> float:
    number = check_constant(f"{owner}: {name}", value)
    if number < 0:
        raise ArgumentError(f"{owner}: {name} must be zero or more, got {value!r}")
    return number


def _collect_params(owner: str, params) -> tuple[list[tvm.runtime.Tensor], list[Node] | None]:
    """The parameters' tensors, and the Parameter nodes when every entry is one."""
    if isinstance(params, (Node, tvm.runtime.Tensor)) or not isinstance(params, Iterable):
        raise ArgumentTypeError(f"{owner}: params must be a list of Parameter nodes or TVM "
                                f"tensors, got {type(params).__name__}; write [p] for one")
    entries = list(params)
    if not entries:
        raise ArgumentError(f"{owner}: params is empty; an optimiser needs at least one "
                            f"parameter")
    tensors = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Parameter):
            tensors.append(entry.data)
        elif isinstance(entry, tvm.runtime.Tensor):
            tensors.append(entry)
        elif isinstance(entry, Node):
            raise ArgumentTypeError(f"{owner}: params[{i}] is the graph node {entry.name}, "
                                    f"not a Parameter: it holds no data to update")
        else:
            raise ArgumentTypeError(f"{owner}: params[{i}] must be a Parameter or a TVM "
                                    f"tensor, got {type(entry).__name__}")
    first = tensors[0]
    for i, tensor in enumerate(tensors):
        if str(tensor.dtype) not in SUPPORTED_DTYPES or str(tensor.dtype) != str(first.dtype):
            raise DtypeError(f"{owner}: params[{i}] has dtype {tensor.dtype}; every parameter "
                             f"must have the dtype of params[0] ({first.dtype}), one of "
                             f"{SUPPORTED_DTYPES}")
        if tensor.device != first.device:
            raise ArgumentError(f"{owner}: params[{i}] is on {tensor.device}, params[0] on "
                                f"{first.device}; one kernel updates them all on one device")
    # The update writes each parameter in place: the same memory twice would be updated twice.
    seen: dict[int, int] = {}
    for i, tensor in enumerate(tensors):
        j = seen.setdefault(tensor.data_ptr(), i)
        if j != i:
            raise ArgumentError(f"{owner}: params[{i}] is the same tensor as params[{j}]")
    nodes = entries if all(isinstance(e, Parameter) for e in entries) else None
    return tensors, nodes


def _target_for(owner: str, device, target: str | None) -> str:
    on_gpu = device.dlpack_device_type() == tvm.cuda(0).dlpack_device_type()
    expected = "cuda" if on_gpu else "llvm"
    if target is not None and target != expected:
        raise ArgumentError(f"{owner}: target {target!r} does not fit parameters on {device}; "
                            f"leave it out or pass {expected!r}")
    return expected


class Optimizer:
    """The base class: subclasses set ``kind``, ``hyper_names`` (the order of the kernel's
    coefficient vector, from ``dlsys.kernels.optim``) and ``state_names``, and implement
    ``_hyperparameters`` and ``_kernel_params``.

    ``params`` are Parameter nodes (then ``minimize`` can build a training step) or TVM
    tensors, all of one dtype and device; the optimiser updates them in place.
    """

    kind: str = ""
    hyper_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    # State that must stay non-negative (a square root reads it).
    nonnegative_states: tuple[str, ...] = ()

    def __init__(self, params, lr, target: str | None = None):
        owner = type(self).__name__
        self.params, self._nodes = _collect_params(owner, params)
        # One count in every parameter's version, stepped once per update.
        self._update_count = (Parameter.update_count(self._nodes, self) if self._nodes
                              else None)
        self.dtype = str(self.params[0].dtype)
        self.device = self.params[0].device
        self.target = _target_for(owner, self.device, target)
        self._lr_value = check_rate(owner, "lr", lr, self.dtype)
        hyper = self._hyperparameters()
        values = [check_constant(f"{owner}: {name}", hyper[name]) for name in self.hyper_names]
        # Everything is checked: from here on, nothing can refuse the arguments.
        self._lr = self._tensor(np.array([self._lr_value]))
        self._hyper = self._tensor(np.array(values))
        self._step = self._tensor(np.zeros(1))
        self._state = {name: [self._tensor(np.zeros(p.shape)) for p in self.params]
                       for name in self.state_names}
        shapes = tuple(tuple(int(d) for d in p.shape) for p in self.params)
        self._kernel = KernelSpec(self.kind, self._kernel_params(shapes)).build(self.target,
                                                                               self.dtype)
        # The clipped kernel (``step(..., max_grad_norm=...)``), built at its first use; its
        # limit and the norm it writes, in float64 as the kernel sums.
        self._clipped_kernel = None
        self._max_norm_value: float | None = None
        self._max_norm = tvm.runtime.tensor(np.zeros(1, ACCUMULATOR), self.device)
        self._grad_norm = tvm.runtime.tensor(np.zeros(1, ACCUMULATOR), self.device)
        self._last_clipped = False   # whether the last update clipped (wrote the norm)
        self._grads: list | None = None
        self._args: tuple = ()
        self._clipped_args: tuple = ()
        # The rate every schedule starts from, set by the first one (PyTorch's initial_lr),
        # so that a schedule made after another one has changed ``lr`` starts from the same.
        self.initial_lr: float | None = None

    @property
    def state_bytes(self) -> int:
        """The bytes of the optimiser's own state (moments, step count, coefficients), held
        beside a training step's program: what ``minimize(memory_budget=...)`` counts."""
        tensors = [self._lr, self._hyper, self._step, self._max_norm, self._grad_norm,
                   *(t for name in self.state_names for t in self._state[name])]
        return sum(math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in tensors)

    # ------------------------------------------------------------- subclass hooks
    def _hyperparameters(self) -> dict[str, float]:
        """The kernel's coefficients by name (every name of ``hyper_names``)."""
        raise NotImplementedError

    def _kernel_params(self, shapes: tuple) -> tuple:
        """The ``KernelSpec`` parameters of the update kernel for these shapes."""
        return (shapes,)

    # ------------------------------------------------------------- learning rate
    def _tensor(self, array: np.ndarray) -> tvm.runtime.Tensor:
        return tvm.runtime.tensor(np.ascontiguousarray(array, dtype=self.dtype), self.device)

    @property
    def lr(self) -> float:
        """The learning rate; set it between steps (it is read by the kernel at run time)."""
        return self._lr_value

    @lr.setter
    def lr(self, value: float) -> None:
        self._write_lr(check_rate(type(self).__name__, "lr", value, self.dtype))

    def _write_lr(self, value: float) -> None:
        """Set a checked rate; schedules use it directly, since annealing may reach 0."""
        self._lr_value = float(value)
        self._lr.copyfrom(np.array([value], dtype=self.dtype))

    @property
    def steps(self) -> int:
        """How many updates have been applied."""
        return int(self._step.numpy()[0])

    # ------------------------------------------------------------- the update
    def step(self, grads: Sequence[tvm.runtime.Tensor],
             max_grad_norm: float | None = None) -> None:
        """Apply one update with ``grads``, TVM tensors given in the order of ``params``.

        ``max_grad_norm``: clip the gradients by their global L2 norm first, as
        ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` does (each read as
        ``grad * min(1, max_grad_norm / (norm + 1e-6))``; ``math.inf`` never clips), inside
        the same kernel, which sums the squares in float64 and writes the norm before
        clipping to ``last_grad_norm``. The gradients themselves are left as they are.

        The argument tuple is built once and reused while the gradients are the same tensors
        (an executor returns the same buffers every run), so a step allocates nothing.
        """
        bound = self._grads
        if (bound is None or not isinstance(grads, (list, tuple)) or len(grads) != len(bound)
                or any(a is not b for a, b in zip(grads, bound))):
            self._bind(grads)
        if max_grad_norm is None:
            self._kernel.func(*self._args)
        else:
            # Anything but the float last set is checked (NaN never equals it, an array is
            # not a float: both refused) and copied to the device.
            if not (type(max_grad_norm) is float and max_grad_norm == self._max_norm_value):
                self._set_max_norm(max_grad_norm)
            self._clipped_kernel.func(*self._clipped_args)
        self.count_fused_update(clipped=max_grad_norm is not None)

    def fused_update(self) -> tuple | None:
        """The unclipped update as one kernel call, ``(function, arguments, key)``, with the
        gradients bound by the last ``step`` (None before it): a training step's executor
        makes this call itself, in its run (``TrainStep``, ``Executor.attach_update``). The
        arguments are the same tuple while the gradients are the same tensors."""
        if self._grads is None:
            return None
        return self._kernel.func, self._args, self._kernel.key

    def count_fused_update(self, clipped: bool = False) -> None:
        """What follows each update, made by ``step`` or by the executor holding
        ``fused_update``'s call: an executor holding a parameter as a constant recomputes
        from it."""
        self._last_clipped = clipped
        if self._update_count is not None:
            Parameter.step_update_count(self._update_count)

    def _set_max_norm(self, value) -> None:
        number = check_max_grad_norm(f"{type(self).__name__}.step", value)
        if self._clipped_kernel is None:
            shapes = tuple(tuple(int(d) for d in p.shape) for p in self.params)
            spec = KernelSpec(f"{self.kind}_clipped", self._kernel_params(shapes))
            self._clipped_kernel = spec.build(self.target, self.dtype)
            self._bind_clipped()
        self._max_norm.copyfrom(np.array([number], dtype=ACCUMULATOR))
        self._max_norm_value = number

    @property
    def last_grad_norm(self) -> float | None:
        """The global L2 norm of the gradients (before clipping) at the last update, when
        that update clipped (``step(..., max_grad_norm=...)``); else None. PyTorch's
        ``clip_grad_norm_`` returns the same number. Reading it copies one number from the
        device: nothing is computed for it."""
        return float(self._grad_norm.numpy()[0]) if self._last_clipped else None

    def _bind(self, grads) -> None:
        owner = f"{type(self).__name__}.step"
        if isinstance(grads, tvm.runtime.Tensor) or not isinstance(grads, Sequence):
            raise ArgumentTypeError(f"{owner}: grads must be a list of TVM tensors, got "
                                    f"{type(grads).__name__}")
        if len(grads) != len(self.params):
            raise ArgumentError(f"{owner}: got {len(grads)} gradients for "
                                f"{len(self.params)} parameters")
        for i, (grad, param) in enumerate(zip(grads, self.params)):
            if not isinstance(grad, tvm.runtime.Tensor):
                raise ArgumentTypeError(f"{owner}: grads[{i}] must be a TVM tensor, got "
                                        f"{type(grad).__name__}")
            if tuple(grad.shape) != tuple(param.shape):
                raise ShapeError(f"{owner}: grads[{i}] has shape {tuple(grad.shape)}, its "
                                 f"parameter {tuple(param.shape)}")
            check_dtype_device(grad, f"{owner}: grads[{i}]", self.dtype, self.device,
                               "the parameters")
        states = [t for name in self.state_names for t in self._state[name]]
        self._args = (self._lr, self._hyper, self._step, *self.params, *states, *grads,
                      self._step, *states, *self.params)
        self._grads = list(grads)
        self._bind_clipped()

    def _bind_clipped(self) -> None:
        """The clipped kernel's arguments: the plain kernel's, with the limit after the
        gradients and the norm after the outputs (``dlsys.kernels.optim.compute``)."""
        if self._clipped_kernel is None or self._grads is None:
            return
        inputs = 3 + len(self.params) * (1 + len(self.state_names)) + len(self._grads)
        self._clipped_args = (*self._args[:inputs], self._max_norm, *self._args[inputs:],
                              self._grad_norm)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the optimiser's state as numpy arrays: ``lr``, ``step`` and each state
        tensor as ``"<name>.<parameter index>"`` (PyTorch's names: ``momentum_buffer``,
        ``exp_avg``, ``exp_avg_sq``). The coefficients are the constructor's arguments."""
        state = {"lr": np.array(self.lr), "step": np.array(float(self.steps))}
        for name in self.state_names:
            for i, tensor in enumerate(self._state[name]):
                state[f"{name}.{i}"] = tensor.numpy()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict`` returned. Everything is checked before anything is
        written, and the error lists every problem: missing or unexpected keys, shapes,
        values that are not finite numbers."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise ArgumentTypeError(f"{owner} takes a dict of arrays, got "
                                    f"{type(state_dict).__name__}")
        expected = {"lr": (), "step": ()}
        for name in self.state_names:
            for i, param in enumerate(self.params):
                expected[f"{name}.{i}"] = tuple(param.shape)
        checked, problems = state_arrays(expected, state_dict)
        arrays = {}
        for key, array in checked.items():
            if not np.isfinite(array).all():
                problems.append(f"{key}: holds values that are not finite")
            elif key.split(".")[0] in self.nonnegative_states and (array < 0).any():
                problems.append(f"{key}: holds negative values")
            else:
                arrays[key] = array
        if "step" in arrays:
            step = float(arrays["step"])
            if step != math.floor(step) or not 0 <= step <= MAX_STEPS:
                problems.append(f"step: must be a whole number from 0 to {MAX_STEPS}, "
                                f"got {step}")
        if "lr" in arrays:
            try:
                check_rate(owner, "lr", float(arrays["lr"]), self.dtype, allow_zero=True)
            except ArgumentError as err:
                problems.append(str(err).replace(f"{owner}: ", ""))
        if problems:
            raise ShapeError(f"{owner}: " + "; ".join(problems))
        self._write_lr(float(arrays["lr"]))
        self._last_clipped = False  # the norm was of another run's gradients
        self._step.copyfrom(np.array([arrays["step"]], dtype=self.dtype))
        for name in self.state_names:
            for i, tensor in enumerate(self._state[name]):
                tensor.copyfrom(np.ascontiguousarray(arrays[f"{name}.{i}"], dtype=self.dtype))

    # ------------------------------------------------------------- training
    def minimize(self, loss: Node, max_grad_norm: float | None = None,
                 memory_budget: int | str | None = None) -> TrainStep:
        """A compiled training step for ``loss`` (the TinyFlow / TensorFlow 1 idiom).

        ``step = optimizer.minimize(loss)``; ``step(feed_dict)`` runs the forward pass, the
        gradients of ``loss`` with respect to this optimiser's Parameter nodes (one planned
        executor for the loss and every gradient) and the fused update, and returns the loss
        as a float. Needs an optimiser built over Parameter nodes.

        ``max_grad_norm``: clip the gradients by their global L2 norm in the update kernel,
        as ``torch.nn.utils.clip_grad_norm_`` before ``optimizer.step()``; the step's
        ``last_grad_norm`` is the norm before clipping (what ``clip_grad_norm_`` returns).
        """
        owner = f"{type(self).__name__}.minimize"
        if self._nodes is None:
            raise ArgumentError(f"{owner} needs an optimiser built over Parameter nodes; this "
                                f"one was given TVM tensors, which no graph reads")
        if not isinstance(loss, Node):
            raise ArgumentTypeError(f"{owner}: loss must be a graph node, got "
                                    f"{type(loss).__name__}")
        budget = None if memory_budget is None else parse_bytes(f"{owner}: memory_budget",
                                                                 memory_budget)
        return TrainStep(self, loss, max_grad_norm=check_max_grad_norm(owner, max_grad_norm),
                         memory_budget=budget)

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v:g}" for k, v in self._hyperparameters().items())
        return (f"{type(self).__name__}({len(self.params)} parameters, lr={self.lr:g}, "
                f"{hyper})")

