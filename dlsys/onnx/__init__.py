"""``dlsys.onnx``: ONNX models in and out.

- ``import_model(path)``: an ONNX model as a trainable ``dlsys.nn.Module``;
- ``InferenceSession(path)``: onnxruntime's interface, run by dlsys's passes and kernels;
- ``export(model, input_shape, path, class_names=None)``: a ``dlsys.nn`` model as an ONNX
  file, its class names in the file's metadata (``InferenceSession.class_names``);
- ``Backend``: ONNX's backend interface (``onnx.backend.base``), for tools written against
  it (``dlsys.onnx.backend``; ``python -m dlsys.testing.onnx_backend`` runs ONNX's own
  conformance cases through it).

Needs the ``onnx`` package (``pip install 'dlsys[onnx]'``); onnxruntime is never needed.
"""

from dlsys.onnx.export import export
from dlsys.onnx.importer import OnnxModule, import_model
from dlsys.onnx.ops import supported_ops
from dlsys.onnx.reader import OnnxError
from dlsys.onnx.session import InferenceSession, ModelMetadata, NodeArg

__all__ = ["Backend", "BackendRep", "export", "import_model", "InferenceSession",
           "ModelMetadata", "NodeArg", "OnnxModule", "OnnxError", "supported_ops"]


def __getattr__(name: str):
    # The backend subclasses onnx's own classes: imported when asked for, so that importing
    # dlsys.onnx needs no onnx package.
    if name in ("Backend", "BackendRep"):
        from dlsys.onnx import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'dlsys.onnx' has no attribute {name!r}")
