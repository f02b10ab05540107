"""Seeded random networks for soundness tests: FC, conv, with normalisation and residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn

from nncert.domains.from_torch import Normalize, Residual, network_from_torch
from nncert.domains.network import Network


def fc_model(seed: int, widths=(8, 8), n_in: int = 4, n_out: int = 3, normalize: bool = True) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [Normalize(0.3, 0.7)] if normalize else []
    prev = n_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, n_out))
    model = nn.Sequential(*layers)
    _randomize(model, g)
    return model.eval()


def conv_model(seed: int, channels: int = 1, size: int = 6, n_out: int = 3, normalize: bool = True,
               batchnorm: bool = True, pool: bool = True) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [Normalize([0.5] * channels, [0.25] * channels)] if normalize else []
    layers += [nn.Conv2d(channels, 3, 3, stride=1, padding=1)]
    layers += [nn.BatchNorm2d(3)] if batchnorm else []
    layers += [nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()]
    layers += [nn.AvgPool2d(2, 1)] if pool else []
    side = (size + 1) // 2 - (1 if pool else 0)
    layers += [nn.Flatten(), nn.Linear(4 * side * side, 6), nn.ReLU(), nn.Linear(6, n_out)]
    model = nn.Sequential(*layers)
    _randomize(model, g)
    return model.eval()


def residual_model(seed: int, n_in: int = 4, width: int = 6, n_out: int = 3) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    block = Residual(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)))
    model = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), block, nn.ReLU(), nn.Linear(width, n_out))
    _randomize(model, g)
    return model.eval()


ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leakyrelu": lambda: nn.LeakyReLU(0.1)}


def activation_model(seed: int, activation: str, n_in: int = 4, widths=(8, 8), n_out: int = 3) -> nn.Sequential:
    """An MLP with ``activation`` ('sigmoid', 'tanh', 'leakyrelu') after one hidden layer and a ReLU after the
    other, weights scaled up so that the activations see their curved (or both linear) parts."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, widths[0]), ACTIVATIONS[activation](), nn.Linear(widths[0], widths[1]),
                          nn.ReLU(), nn.Linear(widths[1], widths[1]), ACTIVATIONS[activation](),
                          nn.Linear(widths[1], n_out))
    _randomize(model, g, gain=3.0)
    return model.eval()


def maxpool_model(seed: int, channels: int = 1, size: int = 6, n_out: int = 3) -> nn.Sequential:
    """Conv -> ReLU -> MaxPool (padding) -> Conv -> LeakyReLU -> MaxPool (stride 1, dilation 2) -> Linear."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, padding=1),
                          nn.Conv2d(3, 3, 2), nn.LeakyReLU(0.2), nn.MaxPool2d(2, stride=1, dilation=2),
                          nn.Flatten(), nn.Linear(3 * (size // 2 - 2) ** 2, 6), nn.ReLU(), nn.Linear(6, n_out))
    _randomize(model, g)
    return model.eval()


def _randomize(model: nn.Module, g: torch.Generator, gain: float = 1.0) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


def random_network(seed: int, kind: str, detach: bool = False) -> tuple[nn.Module, Network]:
    """A (torch model, IR) pair of the given kind: 'fc', 'conv', 'residual', or one of ACTIVATION_KINDS.

    With ``detach`` the IR's tensors are cut off the model's autograd graph, as for verification.
    """
    if kind == "fc":
        model, shape = fc_model(seed), (4,)
    elif kind == "conv":
        model, shape = conv_model(seed), (1, 6, 6)
    elif kind == "residual":
        model, shape = residual_model(seed), (4,)
    elif kind in ACTIVATIONS:
        model, shape = activation_model(seed, kind), (4,)
    elif kind == "maxpool":
        model, shape = maxpool_model(seed), (1, 6, 6)
    else:
        raise ValueError(kind)
    net = network_from_torch(model, shape)
    return model, net.detach() if detach else net


KINDS = ["fc", "conv", "residual"]
ACTIVATION_KINDS = [*ACTIVATIONS, "maxpool"]


def random_region(net: Network, seed: int, n: int = 3, eps: float = 0.08, rows: int = 4):
    """n input boxes of radius eps around random points, and random rows C (n, rows, *out) to bound."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=g)
    C = torch.randn(n, rows, *net.output_shape, generator=g)
    return x - eps, x + eps, C


def input_fed_conv_network(seed: int, n_in: int = 16, side: int = 32, channels: tuple[int, int] = (8, 16),
                           n_out: int = 10) -> Network:
    """A low-dimensional input feeding a conv net, as in generative or sensor benchmarks: Linear to 3 x side x
    side, two stride-2 convolutions with ReLUs, then FC; random seeded weights."""
    from nncert.domains.network import Conv2d, Linear, ReLU, Reshape

    g = torch.Generator().manual_seed(seed)

    def weights(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5, torch.randn(shape[0], generator=g) * 0.3

    c1, c2 = channels
    flat = c2 * (side // 4) ** 2
    ops = [(Linear(*weights(3 * side * side, n_in)), (0,)), (Reshape((3, side, side)), (1,)),
           (Conv2d(*weights(c1, 3, 3, 3), (2, 2), (1, 1), (1, 1)), (2,)), (ReLU(), (3,)),
           (Conv2d(*weights(c2, c1, 3, 3), (2, 2), (1, 1), (1, 1)), (4,)), (ReLU(), (5,)), (Reshape((-1,)), (6,)),
           (Linear(*weights(50, flat)), (7,)), (ReLU(), (8,)), (Linear(*weights(n_out, 50)), (9,))]
    return Network((n_in,), ops)
