"""Checks of user arguments shared by the graph API and the kernel builders, so that both
refuse the same values with the same words."""

from __future__ import annotations

import math
import numbers

import numpy as np

from dlsys.errors import ArgumentError, ArgumentTypeError, DtypeError

# The largest float32: a constant beyond it cannot be compiled into a float32 kernel.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_flag(name: str, value) -> bool:
    """A bool (or 0/1); ``bool("no")`` is True, so anything else is a caller's mistake."""
    if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, int) and value in (0, 1)):
        raise ArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_constant(name: str, value) -> float:
    """A finite real number that a float32 kernel can hold, as a float."""
    # numbers.Real admits numpy scalars (a learning rate read from an array); bool is an int
    # to Python but never a meaningful constant here.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float, such as 10**400
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise ArgumentError(f"{name} must be a finite float32 number, got {value!r}")
    return number


def check_dtype_device(tensor, what: str, dtype: str, device, whose: str,
                       device_error: type[Exception] = ArgumentError) -> None:
    """Refuse a TVM ``tensor`` (named ``what``) that is not of ``dtype`` on ``device``, which
    belong to ``whose`` ("the parameters", "this executor runs"): a DtypeError, else
    ``device_error``. A kernel would read either mismatch as garbage, or crash."""
    if str(tensor.dtype) != dtype:
        raise DtypeError(f"{what} has dtype {tensor.dtype}, {whose} {dtype}")
    if tensor.device != device:
        raise device_error(f"{what} is on {tensor.device}, {whose} on {device}")


def state_arrays(expected: dict[str, tuple[int, ...]], given: dict, strict: bool = True
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of ``given`` (a state dict) for the ``expected`` names and shapes, and
    every problem found: missing and unexpected keys (when ``strict``), values that are not
    arrays of real numbers, wrong shapes. Callers check everything before writing anything,
    so a refused dict changes nothing, and the error lists every problem at once."""
    problems: list[str] = []
    if strict:
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in given if k not in expected]
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
    arrays: dict[str, np.ndarray] = {}
    for key, shape in expected.items():
        if key not in given:
            continue
        value = given[key]
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if (array.dtype == object or not np.issubdtype(array.dtype, np.number)
                or np.iscomplexobj(array)):
            problems.append(f"{key}: not an array of real numbers ({array.dtype})")
        elif tuple(array.shape) != tuple(shape):
            problems.append(f"{key}: shape {tuple(array.shape)}, expected {tuple(shape)}")
        else:
            arrays[key] = array
    return arrays, problems


# Binary units, as ``--memory-budget 64MiB`` writes them (a plain number is bytes).
BYTE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_bytes(name: str, value) -> int:
    """A positive size in bytes from an int or a string such as ``"64MiB"``, ``"1.5 GiB"``
    or ``"4096"`` (units ``KiB``, ``MiB``, ``GiB``; an ``ArgumentError`` naming ``name``
    otherwise)."""
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be a size in bytes (an int, or a string such as "
                                f"'64MiB'), got {value!r}")
    if isinstance(value, numbers.Integral):
        number, unit = int(value), ""
    elif isinstance(value, str):
        text = value.strip()
        digits = text.rstrip("KMGiB").strip()
        unit = text[len(text.rstrip("KMGiB")):]
        try:
            number = float(digits)
        except ValueError:
            number = math.nan
        if unit not in BYTE_UNITS or not math.isfinite(number):
            raise ArgumentError(f"{name} must be a size such as 4096, '512KiB', '64MiB' or "
                                f"'2GiB', got {value!r}")
    else:
        raise ArgumentTypeError(f"{name} must be a size in bytes (an int, or a string such as "
                                f"'64MiB'), got {type(value).__name__}")
    size = int(number * BYTE_UNITS[unit])
    if size <= 0:
        raise ArgumentError(f"{name} must be positive, got {value!r}")
    return size


def format_bytes(size: int) -> str:
    """``size`` in the largest binary unit that keeps it at least 1 (``"64.00 MiB"``)."""
    for unit in ("GiB", "MiB", "KiB"):
        if size >= BYTE_UNITS[unit]:
            return f"{size / BYTE_UNITS[unit]:.2f} {unit}"
    return f"{size} B"
