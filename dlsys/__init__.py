"""dlsys: a deep-learning system stack on Apache TVM.

``dlsys.save``, ``dlsys.load``, ``dlsys.manual_seed`` and ``dlsys.compile`` (a model as one
shared library: ``dlsys.deploy``) are loaded on first use, so that ``import dlsys`` (and
``dlsys --help``) stays fast.
"""

_LAZY = {"save": "dlsys.nn.serialization", "load": "dlsys.nn.serialization",
         "manual_seed": "dlsys.nn.init", "compile": "dlsys.deploy"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlsys' has no attribute {name!r}")
