"""ReLU²: ``relu(x) ** 2``, the activation of Nemotron's MLP (Hugging Face's ``"relu2"``).

One pass forward (read x, write y) and one backward (read x and dy, write dx = 2 relu(x) dy),
each in fp32 and rounded once: y is exact in every dtype (the square of a representable value,
rounded once, as PyTorch's), dx is at least as accurate as PyTorch's. The kernels use the
gated ops' launch layout (``ops.swiglu``): contiguous tensors as one flat row, others as rows.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from liger_kernel.ops.swiglu import _block_offsets, _layout
from liger_kernel.ops.utils import (
    LigerFunction,
    check_float,
    check_same_shape,
    empty_output,
    fallback_backward,
    fallback_forward,
)
from liger_kernel.utils import use_triton


@triton.jit
def _relu_squared_forward_kernel(x_ptr, y_ptr, stride_x, stride_y, n_cols, blocks_per_row, BLOCK: tl.constexpr):
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.maximum(x, 0.0)
    tl.store(y_ptr + row * stride_y + cols, (r * r).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _relu_squared_backward_kernel(
    x_ptr, dy_ptr, dx_ptr, stride_x, stride_dy, stride_dx, n_cols, blocks_per_row, BLOCK: tl.constexpr
):
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    dx = 2.0 * tl.maximum(x, 0.0) * dy
    tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def relu_squared_reference(x: torch.Tensor) -> torch.Tensor:
    """The spec: ``relu(x) ** 2`` in x's dtype (Hugging Face's ``ReLUSquaredActivation``)."""
    return F.relu(x).square()


def relu_squared_forward(X: torch.Tensor) -> torch.Tensor:
    """``relu(X) ** 2`` into a new tensor of X's shape and dtype; no autograd."""
    check_float("X", X)
    if not use_triton(X):
        return relu_squared_reference(X)
    Y = empty_output(X.shape, X)
    if Y.numel():
        (x, y), strides, n_cols, grid, per_row, block, warps = _layout(X, Y)
        _relu_squared_forward_kernel[grid](x, y, *strides, n_cols, per_row, block, num_warps=warps)
    return Y


def relu_squared_backward(X: torch.Tensor, dY: torch.Tensor) -> torch.Tensor:
    """``dX = 2 * relu(X) * dY`` as a new tensor; no autograd."""
    check_float("X", X)
    check_float("dY", dY)
    check_same_shape(X=X, dY=dY)
    if not use_triton(X):
        return 2 * F.relu(X) * dY.to(X.dtype)
    dX = empty_output(X.shape, X)
    if dX.numel():
        (x, dy, dx), strides, n_cols, grid, per_row, block, warps = _layout(X, dY.to(X.dtype), dX)
        _relu_squared_backward_kernel[grid](x, dy, dx, *strides, n_cols, per_row, block, num_warps=warps)
    return dX


class LigerReLUSquaredFunction(LigerFunction):
    """``relu(X) ** 2`` with Triton forward and backward: ``forward(X)`` -> a tensor of X's shape.
    Saves X (not the output) for backward."""

    @staticmethod
    def forward(ctx, X):
        check_float("X", X)
        ctx.use_triton = use_triton(X)
        if not ctx.use_triton:
            return fallback_forward(ctx, relu_squared_reference, X)
        ctx.save_for_backward(X)
        return relu_squared_forward(X)

    @staticmethod
    def backward(ctx, dY):
        if not ctx.use_triton:
            return fallback_backward(ctx, dY)
        (X,) = ctx.saved_tensors
        return relu_squared_backward(X, dY)
