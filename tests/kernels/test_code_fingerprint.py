"""The disk cache's key covers the source of every kernel module, in the family folders too,
so that editing any of them invalidates the kernels compiled with the old source."""

import importlib
import pkgutil
import sys
from pathlib import Path

import dlsys.kernels
from dlsys.kernels import build, registry


def _kernel_modules() -> list[str]:
    names = ["dlsys.kernels"]
    for info in pkgutil.walk_packages(dlsys.kernels.__path__, "dlsys.kernels."):
        names.append(info.name)
    return names


def test_every_kernel_module_is_hashed():
    hashed = {path.resolve() for path in build.code_files()}
    names = _kernel_modules()
    for name in names:
        importlib.import_module(name)
    missing = [name for name in names if Path(sys.modules[name].__file__).resolve() not in hashed]
    assert missing == []
    # The families' folders are walked, not only the top level.
    assert any(path.parent != build.KERNELS_ROOT for path in hashed)


def test_every_registered_compute_is_in_a_hashed_module():
    hashed = {path.resolve() for path in build.code_files()}
    for kind in registry.KINDS.values():
        compute = getattr(kind.compute, "func", kind.compute)  # partial(elementwise, formula)
        module = sys.modules[compute.__module__]
        assert Path(module.__file__).resolve() in hashed, kind.name
