"""Sliding windows: 2-D convolutions (grouped and dilated too) and their adjoints, and pooling
and its adjoints (``compute``), with register tiles read from the CPU (``schedule``); the
depthwise convolution's compute and schedule (``depthwise``); the pools with ONNX's options
(``pool_options``). One family because they share the padding and window helpers of their
compute and the per-image schedule shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.conv import compute, depthwise, pool_options
from dlsys.kernels.conv.schedule import (
    schedule_conv_direct,
    schedule_conv_gemm,
    schedule_conv_weight,
    schedule_window,
)

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"conv_gemm": schedule_conv_gemm, "conv_direct": schedule_conv_direct,
             "conv_weight": schedule_conv_weight, "window": schedule_window,
             "depthwise": depthwise.schedule_depthwise}


def register(kinds: Registrar) -> None:
    kinds.add("conv2d", compute.conv2d, "conv_gemm")
    kinds.add_epilogue("conv2d_epilogue", compute.conv2d_epilogue, "conv_gemm")
    kinds.add("conv2d_grad_input", compute.conv2d_grad_input, "conv_direct")
    kinds.add_epilogue("conv2d_grad_input_epilogue", compute.conv2d_grad_input_epilogue,
                       "conv_direct")
    kinds.add("conv2d_grad_weight", compute.conv2d_grad_weight, "conv_weight")
    # Dilated and grouped convolutions: the same kernels with the group's channels.
    kinds.add("grouped_conv2d", compute.grouped_conv2d, "conv_gemm")
    kinds.add_epilogue("grouped_conv2d_epilogue", compute.grouped_conv2d_epilogue, "conv_gemm")
    kinds.add("grouped_conv2d_grad_input", compute.grouped_conv2d_grad_input, "conv_direct")
    kinds.add_epilogue("grouped_conv2d_grad_input_epilogue",
                       compute.grouped_conv2d_grad_input_epilogue, "conv_direct")
    kinds.add("grouped_conv2d_grad_weight", compute.grouped_conv2d_grad_weight, "conv_weight")
    kinds.add("depthwise_conv2d", depthwise.depthwise_conv2d, "depthwise")
    kinds.add_epilogue("depthwise_conv2d_epilogue", depthwise.depthwise_conv2d_epilogue,
                       "depthwise")
    for name in ("max_pool2d", "avg_pool2d", "max_pool2d_grad", "avg_pool2d_grad"):
        kinds.add(name, getattr(compute, name), "window")
    kinds.add_epilogue("max_pool2d_grad_epilogue", compute.max_pool2d_grad_epilogue, "window")
    # ONNX's pooling options: dilated max pools, averages over counted positions only.
    kinds.add("dilated_max_pool2d", compute.dilated_max_pool2d, "window")
    for name in ("dilated_max_pool2d_grad", "avg_pool2d_counted", "avg_pool2d_grad_counted",
                 "dilated_avg_pool2d", "dilated_avg_pool2d_grad"):
        kinds.add(name, getattr(pool_options, name), "window")
    kinds.add_epilogue("dilated_max_pool2d_grad_epilogue",
                       pool_options.dilated_max_pool2d_grad_epilogue, "window")
