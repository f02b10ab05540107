"""The input gradient of a strided convolution with few input channels, as one stride-1 convolution.

PGD differentiates the loss with respect to the input image only. Through the first layer that is a
transposed convolution with as many output channels as the image has (1 or 3), for which oneDNN's CPU
kernels are slow: on CIFAR-10 cnn3 (conv 3 -> 16, 5x5, stride 2) it took a third of a PGD step, more than
the rest of the backward pass. Split by the phase of the output position modulo the stride s, the
transposed convolution is s^2 stride-1 correlations with the flipped sub-kernels W[..., a::s, b::s];
stacked as the output channels of one convolution and interleaved by a pixel shuffle, they give the same
gradient (up to float rounding) from a convolution with s^2 times more output channels on s^2 times fewer
pixels, which the forward kernels handle well: 2-5x faster there. On the other layers of cnn3, cnn5 and
cnn7 neither form is consistently faster, the sub-pixel one up to 2x slower on cnn7's
(benchmarks/conv_input_gradient.py), so only strided layers with at most MAX_IN_CHANNELS input channels
take this path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

MAX_IN_CHANNELS = 4


def conv_transpose_subpixel(grad: Tensor, weight: Tensor, stride: int, padding: tuple[int, int],
                            size: tuple[int, int]) -> Tensor:
    """The gradient of conv2d(x, weight, stride, padding) with respect to x (N, C_in, *size) given that of its
    output, grad (N, C_out, h, w): conv_transpose2d as one stride-1 convolution and a pixel shuffle."""
    c_out, c_in, kh, kw = weight.shape
    s = stride
    mh, mw = -(-kh // s), -(-kw // s)  # sub-kernel size of each phase
    # W[o, i, s m + a, s n + b] -> sub[(i, a, b), o, M - 1 - m, M - 1 - n]: flipped, as conv2d correlates
    sub = F.pad(weight, (0, mw * s - kw, 0, mh * s - kh)).reshape(c_out, c_in, mh, s, mw, s).flip(2, 4)
    sub = sub.permute(1, 3, 5, 0, 2, 4).reshape(c_in * s * s, c_out, mh, mw)
    full = F.pixel_shuffle(F.conv2d(grad, sub, None, 1, (mh - 1, mw - 1)), s)
    (ph, pw), (h, w) = padding, size
    # input rows past the last window get no gradient; the shuffled output may stop short of them
    full = F.pad(full, (0, max(0, pw + w - full.shape[-1]), 0, max(0, ph + h - full.shape[-2])))
    return full[..., ph:ph + h, pw:pw + w]


class _Conv2dSubpixelGradient(torch.autograd.Function):
    """conv2d whose backward gives the input's gradient in the sub-pixel form (weight and bias: none)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: tuple[int, int]):
        ctx.save_for_backward(weight)
        ctx.stride, ctx.padding, ctx.size = stride, padding, tuple(x.shape[-2:])
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, = ctx.saved_tensors
        return conv_transpose_subpixel(grad, weight, ctx.stride, ctx.padding, ctx.size), None, None, None, None


class SubpixelInputGradients(TorchFunctionMode):
    """Within this mode, every conv2d with a stride > 1 and at most MAX_IN_CHANNELS input channels computes its
    input's gradient in the sub-pixel form, and no gradient for its weight and bias: for attacks, which
    differentiate with respect to the input only. Other calls run unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = _subpixel_call(*args, **kwargs)
            if call is not None:
                return _Conv2dSubpixelGradient.apply(*call)
        return func(*args, **kwargs)


def _subpixel_call(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The arguments (input, weight, bias, stride, padding) for _Conv2dSubpixelGradient of a conv2d call that
    takes the sub-pixel path, else None."""
    if isinstance(padding, str) or groups != 1 or _pair(dilation) != (1, 1):
        return None
    sh, sw = _pair(stride)
    if sh != sw or sh < 2 or weight.shape[1] > MAX_IN_CHANNELS:
        return None
    return input, weight.detach(), None if bias is None else bias.detach(), sh, _pair(padding)
