"""Converters of ONNX's attention operators (opset 23 Attention, RotaryEmbedding), built on
dlsys's matmul, softmax and masking ops."""
