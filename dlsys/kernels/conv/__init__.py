"""Sliding windows: 2-D convolutions (grouped and dilated too) as implicit GEMMs (``gemm``),
their adjoints, and pooling and its adjoints (``compute``), with register tiles read from
the CPU (``schedule``; pooling's in ``window_schedule``); constant filters packed in
panels of channels (``packed``) or transformed for Winograd's filtering (``winograd``);
the depthwise convolution's compute and schedule (``depthwise``); the pools with ONNX's
options (``pool_options``). One family because they share the padding and window helpers
of their compute and the per-image schedule shape."""

from __future__ import annotations

from dataclasses import astuple
from typing import TYPE_CHECKING

from dlsys.kernels.conv import compute, depthwise, gemm, packed, pool_options, winograd
from dlsys.kernels.conv.schedule import (
    schedule_conv_direct,
    schedule_conv_gemm,
    schedule_conv_weight,
)
from dlsys.kernels.conv.window_schedule import schedule_window

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"conv_gemm": schedule_conv_gemm, "conv_direct": schedule_conv_direct,
             "conv_weight": schedule_conv_weight, "window": schedule_window,
             "depthwise": depthwise.schedule_depthwise,
             "conv_prepacked": packed.schedule_conv_prepacked,
             "conv_winograd": winograd.schedule_conv_winograd}


def _packed_layout(params: tuple, dtype: str) -> tuple | None:
    """How constant filters are laid out, chosen here from the spec's leading ``(shape_x,
    shape_f, shape_y, stride, padding)``: ``("winograd", *WinogradLayout)`` where Winograd's
    filtering applies (``winograd.winograd_layout``), else ``("panels", positions, vectors,
    lanes, in_place)`` where panels of channels pay (``packed.packed_tiles``), else None
    (the position-vectorised kernel reads the filters as stored)."""
    shape_x, shape_f, shape_y, stride, padding = params[:5]
    plan = winograd.winograd_layout(shape_x, shape_f, shape_y, stride, dtype)
    if plan is not None:
        return ("winograd", *astuple(plan))
    tile = packed.packed_tiles(shape_f, shape_y, dtype, stride=stride, padding=padding)
    return None if tile is None else ("panels", tile.positions, tile.vectors, tile.lanes,
                                      tile.in_place)


def register(kinds: Registrar) -> None:
    kinds.add("conv2d", gemm.conv2d, "conv_gemm", packed_layout=_packed_layout)
    kinds.add_epilogue("conv2d_epilogue", gemm.conv2d_epilogue, "conv_gemm",
                       packed_layout=_packed_layout)
    # Constant filters packed once into panels of channels (an inference session's weights).
    kinds.add("pack_filters", packed.pack_filters, "injective")
    kinds.add_epilogue("conv2d_prepacked", packed.conv2d_prepacked, "conv_prepacked")
    # 3 x 3 stride-1 constant filters transformed once for Winograd's minimal filtering.
    kinds.add("winograd_filters", winograd.winograd_filters, "injective")
    kinds.add_epilogue("conv2d_winograd", winograd.conv2d_winograd, "conv_winograd")
    kinds.add("conv2d_grad_input", compute.conv2d_grad_input, "conv_direct")
    kinds.add_epilogue("conv2d_grad_input_epilogue", compute.conv2d_grad_input_epilogue,
                       "conv_direct")
    kinds.add("conv2d_grad_weight", compute.conv2d_grad_weight, "conv_weight")
    # Dilated and grouped convolutions: the same kernels with the group's channels.
    kinds.add("grouped_conv2d", gemm.grouped_conv2d, "conv_gemm")
    kinds.add_epilogue("grouped_conv2d_epilogue", gemm.grouped_conv2d_epilogue, "conv_gemm")
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
