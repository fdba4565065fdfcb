"""ONNX's backend interface (``onnx.backend.base``) over ``InferenceSession``, so that tools
written for any ONNX backend (ONNX's own conformance tests among them) run dlsys:

    from dlsys.onnx.backend import Backend
    rep = Backend.prepare(model)          # imported and checked once
    outputs = rep.run([x])                # compiled per set of input shapes, then run

``run`` takes the inputs as a list in the graph's order (initializers left out) or as a
dict by name, and returns the outputs as a tuple that also answers to the outputs' names,
as onnxruntime's backend does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend as OnnxBackend
from onnx.backend.base import BackendRep as OnnxBackendRep
from onnx.backend.base import Device, DeviceType, namedtupledict

from dlsys.errors import ArgumentError, FeedError
from dlsys.onnx.session import InferenceSession


class BackendRep(OnnxBackendRep):
    """A prepared model: ``run(inputs)`` gives its outputs for ``inputs``."""

    def __init__(self, session: InferenceSession):
        self.session = session
        self.input_names = [arg.name for arg in session.get_inputs()]
        self.output_names = [arg.name for arg in session.get_outputs()]

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        """The outputs for ``inputs`` (a list in the graph's input order, one array for a
        model of one input, or a dict input name -> array)."""
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if not isinstance(inputs, (list, tuple)):
                raise FeedError(f"run: inputs must be a list of arrays or a dict of input name "
                                f"-> array, got {type(inputs).__name__}")
            if len(inputs) != len(self.input_names):
                raise FeedError(f"run: the model takes {len(self.input_names)} input(s) "
                                f"{self.input_names}, got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        outputs = self.session.run(None, feeds)
        return namedtupledict("Outputs", self.output_names)(*outputs)


class Backend(OnnxBackend):
    """dlsys as an ONNX backend: ``prepare`` imports the model once (refusing what dlsys
    cannot run, naming the node), ``run_model`` and ``run_node`` run it once."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> BackendRep:
        """The model imported for repeated runs on ``device`` ("CPU", or "CUDA" where TVM
        has a GPU). ``kwargs`` are other backends' options, accepted and ignored."""
        return BackendRep(InferenceSession(model, ctx=_device_context(device)))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple:
        """One node run on ``inputs`` (arrays, one per input of the node, in order): a model
        of that node alone, its inputs typed as the arrays fed and its outputs as
        ``outputs_info`` says (else as ONNX's shape inference finds them)."""
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        if isinstance(inputs, dict):
            arrays = [inputs[name] for name in node.input if name]
        else:
            arrays = list(inputs)
        names = [name for name in node.input if name]
        if len(arrays) != len(names):
            raise ArgumentError(f"run_node: {node.op_type} reads {len(names)} input(s) "
                                f"{names}, got {len(arrays)} array(s)")
        arrays = [np.asarray(a) for a in arrays]
        graph_inputs = [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in zip(names, arrays)]
        graph_outputs = []
        for i, name in enumerate(node.output):
            if outputs_info is not None and i < len(outputs_info):
                dtype, shape = outputs_info[i]
                graph_outputs.append(onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
            else:
                graph_outputs.append(onnx.ValueInfoProto(name=name))
        graph = onnx.helper.make_graph([node], f"{node.op_type}_node", graph_inputs,
                                       graph_outputs)
        model = onnx.helper.make_model(graph,
                                       opset_imports=[onnx.helper.make_opsetid("", opset)])
        model = onnx.shape_inference.infer_shapes(model)
        return cls.prepare(model, device).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            _device_context(device)
        except ArgumentError:
            return False
        return True


def _device_context(device: str):
    """The TVM device for ONNX's device string ("CPU", "CUDA", "CUDA:1")."""
    import tvm

    try:
        parsed = Device(device)
    except (AttributeError, ValueError):
        raise ArgumentError(f"unknown device {device!r}; dlsys runs on 'CPU' or 'CUDA[:id]'"
                            ) from None
    if parsed.type == DeviceType.CPU:
        return tvm.cpu(0)
    context = tvm.cuda(parsed.device_id)
    if not context.exist:
        raise ArgumentError(f"device {device!r}: TVM finds no such GPU")
    return context


prepare = Backend.prepare
run_model = Backend.run_model
run_node = Backend.run_node
supports_device = Backend.supports_device
