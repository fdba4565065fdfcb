"""The operators, one module per family, and the arithmetic of graph nodes.

Every operator class keeps its shape rule, gradient, traits, kernel spec and numpy reference
together (see ``dlsys.graph.Op``). ``ALL_OPS`` lists every operator singleton and
``ELEMENTWISE_OPS`` the elementwise ones, so test tables pick a new operator up by its
registration here.
"""

from __future__ import annotations

from dlsys.checks import check_constant
from dlsys.errors import ArgumentTypeError
from dlsys.graph import Node, Op, short_name
from dlsys.ops.activations import (
    ACTIVATION_OPS,
    abs_op,
    asinh_op,
    atan_op,
    ceil_op,
    clip_gradient_op,
    clip_op,
    cos_op,
    elu_gradient_op,
    elu_op,
    equal_op,
    erf_op,
    floor_op,
    greater_equal_op,
    greater_op,
    hard_swish_gradient_op,
    hard_swish_op,
    is_inf_op,
    is_nan_op,
    leaky_relu_gradient_op,
    leaky_relu_op,
    less_equal_op,
    less_op,
    logical_and_op,
    logical_not_op,
    logical_or_op,
    logical_xor_op,
    pow_byconst_op,
    pow_op,
    prelu_op,
    round_op,
    sign_op,
    sin_op,
    softplus_op,
    sqrt_op,
    where_op,
)
from dlsys.ops.attention import (
    attention_key_gradient_op,
    attention_lse_op,
    attention_op,
    attention_query_gradient_op,
    attention_value_gradient_op,
)
from dlsys.ops.cast import as_float_op
from dlsys.ops.concat import concat_op, concat_part_op
from dlsys.ops.conv import conv2d_grad_input_op, conv2d_grad_weight_op, conv2d_op
from dlsys.ops.conv_transpose import conv_transpose2d_op
from dlsys.ops.cross_entropy import cross_entropy_gradient_op, cross_entropy_op, target_count_op
from dlsys.ops.cumulative import cumprod_adjoint_op, cumprod_op, cumsum_op
from dlsys.ops.elementwise import (
    BroadcastBinaryOp,
    ElementwiseOp,
    add_byconst_op,
    add_op,
    div_byconst_op,
    div_op,
    exp_op,
    gelu_gradient_op,
    gelu_op,
    log_op,
    mul_byconst_op,
    mul_op,
    neg_op,
    oneslike_op,
    rdiv_byconst_op,
    relu_gradient_op,
    relu_op,
    sigmoid_op,
    sub_op,
    tanh_op,
    zeroslike_op,
)
from dlsys.ops.embedding import embedding_gradient_op, embedding_op
from dlsys.ops.grid_sample import (
    grid_sample_grid_grad_op,
    grid_sample_input_grad_op,
    grid_sample_op,
)
from dlsys.ops.layernorm import (
    layernorm_gradient_op,
    layernorm_op,
    layernorm_scale_gradient_op,
)
from dlsys.ops.layout import transpose_op, trilu_op
from dlsys.ops.linalg import matmul_op
from dlsys.ops.loss import (
    onehot_like_op,
    softmax_op,
    softmaxcrossentropy_gradient_op,
    softmaxcrossentropy_op,
)
from dlsys.ops.lrn import lrn_gradient_op, lrn_op
from dlsys.ops.norm import (
    batchnorm2d_op,
    batchnorm_affine_gradient_op,
    batchnorm_affine_op,
    batchnorm_inference_op,
    batchnorm_normalize_gradient_op,
    batchnorm_normalize_op,
    batchnorm_parameter_gradient_op,
    running_statistic_op,
)
from dlsys.ops.pad import pad_gradient_op, pad_op
from dlsys.ops.placeholder import Parameter, Variable, parameter_op, placeholder_op
from dlsys.ops.pool import (
    avgpool2d_grad_op,
    avgpool2d_op,
    global_avgpool_op,
    maxpool2d_grad_op,
    maxpool2d_op,
)
from dlsys.ops.random import dropout_op, next_seed_op
from dlsys.ops.reduce import (
    broadcastto_op,
    expand_op,
    expandmean_op,
    mean_op,
    reducesumaxiszero_op,
    reducesumto_op,
    sum_op,
)
from dlsys.ops.reduce_modes import (
    argmax_op,
    argmin_op,
    extreme_count_op,
    hardmax_op,
    l1_norm_op,
    l2_norm_op,
    logsumexp_op,
    max_op,
    min_op,
    prod_op,
    reduce_mode_gradient_op,
    sum_square_op,
)
from dlsys.ops.reshape import flatten_op, reshape_op, reshape_to_op
from dlsys.ops.resize import resize_gradient_op, resize_op
from dlsys.ops.slicing import slice_gradient_op, slice_op
from dlsys.ops.softmax import causal_mask_op, logsoftmax_op, softmax_gradient_op
from dlsys.ops.take import take_gradient_op, take_op
from dlsys.ops.tile import expand_to_op, tile_axes_op, tile_op

ALL_OPS: list[Op] = [
    placeholder_op, add_op, mul_op, sub_op, div_op, add_byconst_op, mul_byconst_op,
    div_byconst_op, rdiv_byconst_op, neg_op, relu_op, relu_gradient_op, sigmoid_op, exp_op,
    log_op, tanh_op, oneslike_op, zeroslike_op, matmul_op, reducesumaxiszero_op,
    reducesumto_op, broadcastto_op, sum_op, mean_op, expand_op, expandmean_op,
    softmaxcrossentropy_op, softmaxcrossentropy_gradient_op, softmax_op, conv2d_op,
    conv2d_grad_input_op, conv2d_grad_weight_op, maxpool2d_op, maxpool2d_grad_op, avgpool2d_op,
    avgpool2d_grad_op, global_avgpool_op, conv_transpose2d_op, parameter_op, onehot_like_op,
    reshape_op, flatten_op,
    reshape_to_op, transpose_op, dropout_op, next_seed_op, batchnorm_normalize_op,
    batchnorm_normalize_gradient_op, running_statistic_op, batchnorm_inference_op,
    batchnorm_affine_op, batchnorm_affine_gradient_op, batchnorm_parameter_gradient_op,
    gelu_op, gelu_gradient_op, layernorm_op, layernorm_gradient_op, layernorm_scale_gradient_op,
    logsoftmax_op, softmax_gradient_op, causal_mask_op,
    embedding_op, embedding_gradient_op, cross_entropy_op, cross_entropy_gradient_op,
    target_count_op, attention_op, attention_lse_op, attention_query_gradient_op,
    attention_key_gradient_op, attention_value_gradient_op, slice_op, slice_gradient_op,
    concat_op, concat_part_op, take_op, take_gradient_op, pad_op, pad_gradient_op, tile_op,
    tile_axes_op, expand_to_op, trilu_op, as_float_op,
    l1_norm_op, l2_norm_op, sum_square_op, max_op, min_op, prod_op, logsumexp_op,
    reduce_mode_gradient_op, argmax_op, argmin_op, hardmax_op, lrn_op, lrn_gradient_op,
    extreme_count_op, resize_op, resize_gradient_op, cumsum_op, cumprod_op,
    cumprod_adjoint_op, grid_sample_op, grid_sample_input_grad_op, grid_sample_grid_grad_op,
    *ACTIVATION_OPS,
]
ELEMENTWISE_OPS: list[ElementwiseOp] = [op for op in ALL_OPS if isinstance(op, ElementwiseOp)]


# Python numbers on either side become by-constant ops, as users of the course API expect;
# anything else is refused by the by-constant op's check, naming the node. ``a - c`` and
# ``c - a`` are ``a + (-c)`` and ``(-a) + c``: IEEE negation is exact, so both round as
# ``a - c`` and ``c - a`` do.
def _add(self: Node, other) -> Node:
    return add_op(self, other) if isinstance(other, Node) else add_byconst_op(self, other)


def _mul(self: Node, other) -> Node:
    return mul_op(self, other) if isinstance(other, Node) else mul_byconst_op(self, other)


def _sub(self: Node, other) -> Node:
    if isinstance(other, Node):
        return sub_op(self, other)
    return add_byconst_op(self, -check_constant(f"({short_name(self)} - ...): the right operand",
                                                other))


def _rsub(self: Node, other) -> Node:
    # Only a non-node reaches here: a node on the left would have called its own _sub.
    number = check_constant(f"(... - {short_name(self)}): the left operand", other)
    return add_byconst_op(neg_op(self), number)


def _neg(self: Node) -> Node:
    return neg_op(self)


def _truediv(self: Node, other) -> Node:
    return div_op(self, other) if isinstance(other, Node) else div_byconst_op(self, other)


def _rtruediv(self: Node, other) -> Node:
    return rdiv_byconst_op(self, other)


def _matmul(self: Node, other) -> Node:
    if not isinstance(other, Node):
        raise ArgumentTypeError(f"({short_name(self)} @ ...): the right operand must be a graph "
                                f"Node, got {type(other).__name__} {other!r}")
    return matmul_op(self, other)


def _rmatmul(self: Node, other) -> Node:
    raise ArgumentTypeError(f"(... @ {short_name(self)}): the left operand must be a graph "
                            f"Node, got {type(other).__name__}; feed it through a placeholder")


Node.__add__ = Node.__radd__ = _add
Node.__mul__ = Node.__rmul__ = _mul
Node.__sub__, Node.__rsub__ = _sub, _rsub
Node.__truediv__, Node.__rtruediv__ = _truediv, _rtruediv
Node.__matmul__, Node.__rmatmul__ = _matmul, _rmatmul
Node.__neg__ = _neg
# numpy scalars and arrays defer to the methods above instead of treating a node as an
# object array element (np.float32(2) - a would otherwise go through a ufunc).
Node.__array_ufunc__ = None

__all__ = [
    "gelu_op", "gelu_gradient_op", "layernorm_op", "layernorm_gradient_op",
    "layernorm_scale_gradient_op", "logsoftmax_op", "softmax_gradient_op", "causal_mask_op",
    "embedding_op", "embedding_gradient_op", "cross_entropy_op", "cross_entropy_gradient_op",
    "target_count_op", "attention_op", "attention_lse_op", "attention_query_gradient_op",
    "attention_key_gradient_op", "attention_value_gradient_op",
    "Parameter", "parameter_op", "onehot_like_op", "reshape_op", "flatten_op", "reshape_to_op",
    "transpose_op", "dropout_op", "next_seed_op", "batchnorm2d_op", "slice_op",
    "slice_gradient_op", "concat_op", "concat_part_op", "take_op", "take_gradient_op",
    "pad_op", "pad_gradient_op", "tile_op", "tile_axes_op", "expand_to_op", "trilu_op",
    "as_float_op",
    "ALL_OPS", "ELEMENTWISE_OPS", "BroadcastBinaryOp", "Variable", "placeholder_op", "add_op",
    "mul_op", "sub_op", "div_op", "add_byconst_op", "mul_byconst_op", "div_byconst_op",
    "rdiv_byconst_op", "neg_op", "relu_op", "relu_gradient_op", "sigmoid_op", "exp_op",
    "log_op", "tanh_op", "oneslike_op", "zeroslike_op", "matmul_op", "reducesumaxiszero_op",
    "reducesumto_op", "broadcastto_op", "sum_op", "mean_op", "expand_op", "expandmean_op",
    "softmaxcrossentropy_op", "softmaxcrossentropy_gradient_op", "softmax_op", "conv2d_op",
    "conv2d_grad_input_op", "conv2d_grad_weight_op", "maxpool2d_op", "maxpool2d_grad_op",
    "avgpool2d_op", "avgpool2d_grad_op", "global_avgpool_op", "conv_transpose2d_op",
    "l1_norm_op", "l2_norm_op", "sum_square_op", "max_op", "min_op", "prod_op",
    "logsumexp_op", "reduce_mode_gradient_op", "argmax_op", "argmin_op", "hardmax_op",
    "lrn_op", "lrn_gradient_op", "extreme_count_op", "resize_op", "resize_gradient_op",
    "abs_op", "asinh_op", "atan_op", "ceil_op", "clip_gradient_op", "clip_op", "cos_op",
    "elu_gradient_op", "elu_op", "equal_op", "erf_op", "floor_op", "greater_equal_op",
    "greater_op",
    "hard_swish_gradient_op", "hard_swish_op", "leaky_relu_gradient_op", "leaky_relu_op",
    "less_equal_op", "less_op", "logical_and_op", "logical_not_op", "logical_or_op",
    "logical_xor_op", "pow_byconst_op", "pow_op", "prelu_op", "round_op", "sign_op", "sin_op",
    "softplus_op", "sqrt_op", "where_op", "is_nan_op", "is_inf_op",
]
