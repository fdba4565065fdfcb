"""Normalisation: batch normalisation's per-channel statistics of NCHW tensors and the passes
that use them (``compute``), one parallel loop over groups of channels (``schedule``); layer
normalisation over the last axis (``layernorm``), row by row (``rows``), whose row
reductions and schedule softmax shares; local response normalisation across channels
(``lrn``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dlsys.kernels.norm import compute, layernorm, lrn
from dlsys.kernels.norm.rows import schedule_row_columns, schedule_rows
from dlsys.kernels.norm.schedule import schedule_channel_norm

if TYPE_CHECKING:
    from dlsys.kernels.registry import Registrar

SCHEDULES = {"channel_norm": schedule_channel_norm, "rows": schedule_rows,
             "row_columns": schedule_row_columns}


def register(kinds: Registrar) -> None:
    for name in ("batchnorm_normalize", "batchnorm_normalize_gradient", "running_statistic",
                 "channel_sum", "batchnorm_affine"):
        kinds.add(name, getattr(compute, name), "channel_norm")
    kinds.add_epilogue("batchnorm_affine_epilogue", compute.batchnorm_affine_epilogue,
                       "channel_norm")
    for name in ("batchnorm_affine_gradient", "batchnorm_parameter_gradient",
                 "batchnorm_inference"):
        kinds.add(name, getattr(compute, name), "channel_norm")
    kinds.add("layernorm", layernorm.layernorm, "rows")
    kinds.add("layernorm_gradient", layernorm.layernorm_gradient, "rows")
    kinds.add("layernorm_scale_gradient", layernorm.layernorm_scale_gradient, "row_columns")
    kinds.add("lrn", lrn.lrn, "each_block")
    kinds.add("lrn_gradient", lrn.lrn_gradient, "each_block")
