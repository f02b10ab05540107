"""Conversion of torch modules to the network IR.

Supported: ``nn.Sequential`` (nested) of Linear, Conv2d (groups=1), AvgPool2d,
BatchNorm1d/2d, ReLU, LeakyReLU (0 <= negative_slope <= 1), Sigmoid, Tanh,
MaxPool2d (no ceil_mode, no indices), Flatten, Identity, the :class:`Normalize` layer below,
:class:`Residual` blocks (``main(x) + shortcut(x)``) and any module with a
method ``to_ir(emit, node) -> node`` that emits its own IR ops (``emit(op,
input_nodes) -> node``), e.g. an input abstraction made of several ops.

The IR shares the module's parameters (no copies), so bounds computed on it are
differentiable with respect to them: certified training relies on that.
BatchNorm uses its running statistics in eval mode; in training mode it uses the
statistics of the last clean batch, recorded by :func:`record_batch_stats`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh
from nncert.domains.maxpool import MaxPool2d
from nncert.domains.network import Add as AddOp
from nncert.domains.network import AvgPool2d, Conv2d, ElementwiseAffine, Linear, Network, Op, ReLU, Reshape


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer of a model."""

    def __init__(self, mean, std):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        shape = (-1, 1, 1) if mean.numel() > 1 else ()
        self.register_buffer("mean", mean.reshape(shape))
        self.register_buffer("std", std.reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Residual(nn.Module):
    """``main(x) + shortcut(x)``; the shortcut defaults to the identity."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.shortcut(x)


class UnsupportedModule(TypeError):
    pass


@contextmanager
def record_batch_stats(model: nn.Module):
    """Record the (differentiable) batch mean and variance seen by each BatchNorm in training mode.

    Yields the dict {module: (mean, var)} filled by the next forward pass.
    """
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(module, inputs):
        if module.training:
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != 1]
            stats[module] = (x.mean(dims), x.var(dims, unbiased=False))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm,
                     stats: dict[nn.Module, tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) of a BatchNorm: batch statistics in training mode, running ones in eval."""
    if bn.training and stats is not None and bn in stats:
        mean, var = stats[bn]
    elif bn.track_running_stats and bn.running_mean is not None:
        mean, var = bn.running_mean, bn.running_var
    else:
        raise UnsupportedModule("BatchNorm in training mode needs batch statistics (see record_batch_stats)")
    weight = bn.weight if bn.affine else torch.ones_like(mean)
    bias = bn.bias if bn.affine else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def network_from_torch(model: nn.Module, input_shape: tuple[int, ...],
                       batch_stats: dict[nn.Module, tuple[Tensor, Tensor]] | None = None) -> Network:
    """The IR of ``model`` for per-sample inputs of ``input_shape``."""
    ops: list[tuple[Op, tuple[int, ...]]] = []

    def emit(op: Op, inputs: tuple[int, ...]) -> int:
        ops.append((op, inputs))
        return len(ops)

    def convert(module: nn.Module, node: int) -> int:
        if isinstance(module, nn.Sequential):
            for child in module:
                node = convert(child, node)
            return node
        if isinstance(module, Residual):
            main, shortcut = convert(module.main, node), convert(module.shortcut, node)
            return emit(AddOp(), (main, shortcut))
        if isinstance(module, nn.Identity):
            return node
        if hasattr(module, "to_ir"):
            return module.to_ir(emit, node)
        return emit(_leaf_op(module, batch_stats), (node,))

    convert(model, 0)
    return Network(input_shape, ops)


def _leaf_op(module: nn.Module, batch_stats) -> Op:
    if isinstance(module, nn.Linear):
        bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_features)
        return Linear(module.weight, bias)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedModule(f"unsupported Conv2d configuration: {module}")
        bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_channels)
        return Conv2d(module.weight, bias, tuple(module.stride), tuple(module.padding), tuple(module.dilation))
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, nn.LeakyReLU):
        if not 0.0 <= module.negative_slope <= 1.0:
            raise UnsupportedModule(f"unsupported LeakyReLU slope {module.negative_slope} (only 0 <= slope <= 1)")
        return LeakyReLU(float(module.negative_slope))
    if isinstance(module, nn.Sigmoid):
        return Sigmoid()
    if isinstance(module, nn.Tanh):
        return Tanh()
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or module.return_indices:
            raise UnsupportedModule(f"unsupported MaxPool2d configuration: {module}")
        pair = nn.modules.utils._pair
        stride = module.stride if module.stride is not None else module.kernel_size
        ph, pw = pair(module.padding)
        return MaxPool2d(pair(module.kernel_size), pair(stride), (pw, pw, ph, ph), pair(module.dilation))
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedModule("only Flatten(start_dim=1) is supported")
        return Reshape((-1,))
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override:
            raise UnsupportedModule(f"unsupported AvgPool2d configuration: {module}")
        pair = nn.modules.utils._pair
        stride = module.stride if module.stride is not None else module.kernel_size
        return AvgPool2d(pair(module.kernel_size), pair(stride), pair(module.padding))
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        scale, shift = batchnorm_affine(module, batch_stats)
        spatial = (1, 1) if isinstance(module, nn.BatchNorm2d) else ()
        return ElementwiseAffine(scale.reshape(-1, *spatial), shift.reshape(-1, *spatial))
    if isinstance(module, Normalize):
        return ElementwiseAffine(1.0 / module.std, -module.mean / module.std)
    raise UnsupportedModule(f"cannot convert {type(module).__name__} to the network IR")
