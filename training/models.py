"""Architectures of the certified-training literature, and the IBP initialisation of Shi et al. 2021.

Every model is an ``nn.Sequential`` whose first layer normalises the input with
the dataset's mean and std, so it takes images in [0, 1] and epsilon is in that
unnormalised space.

- ``cnn3``: conv 16 5x5 stride 2, conv 32 4x4 stride 2, linear (the small net of the demos).
- ``cnn5``: conv 32 3x3, conv 64 4x4 stride 2, conv 64 4x4 stride 2, linear 256, linear;
  BatchNorm after every hidden layer (a mid-size member of the CNN7 family).
- ``cnn7``: Shi et al. 2021 / SABR: 3x3 convs 64, 64, 128 (stride 2), 128, 128, linear 512,
  linear; BatchNorm after every hidden layer.
- ``fc``: linear layers of the given widths.

With ``bin_width`` (AbsCert, see training/abscert.py) the model starts with the
abstraction of each pixel to its bin's edges (channels doubled), normalised with
the dataset's statistics per edge channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nncert.domains.from_torch import Normalize
from nncert.training.abscert import BinEdges
from nncert.training.datasets import MEAN, SHAPE, STD

N_CLASSES = 10


@dataclass(frozen=True)
class Architecture:
    convs: tuple[tuple[int, int, int, int], ...]  # (channels, kernel, stride, padding) per conv
    linears: tuple[int, ...]  # hidden widths
    batchnorm: bool


CONVNETS = {
    "cnn3": Architecture(((16, 5, 2, 1), (32, 4, 2, 1)), (), batchnorm=False),
    "cnn5": Architecture(((32, 3, 1, 1), (64, 4, 2, 1), (64, 4, 2, 1)), (256,), batchnorm=True),
    "cnn7": Architecture(((64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)), (512,),
                         batchnorm=True),
}


def build_model(name: str, dataset: str, widths: tuple[int, ...] = (100, 100),
                bin_width: float | None = None) -> nn.Sequential:
    """The model ``name`` (fc, cnn3, cnn5, cnn7) for images of ``dataset``, abstracted to bins of ``bin_width``."""
    arch = Architecture((), tuple(widths), batchnorm=False) if name == "fc" else CONVNETS[name]
    channels, height, width = SHAPE[dataset]
    layers: list[nn.Module] = [Normalize(MEAN[dataset], STD[dataset])]
    if bin_width is not None:
        layers = [BinEdges(bin_width), Normalize(MEAN[dataset] * 2, STD[dataset] * 2)]
        channels *= 2
    for out, kernel, stride, padding in arch.convs:
        layers += _hidden(nn.Conv2d(channels, out, kernel, stride, padding), nn.BatchNorm2d(out), arch.batchnorm)
        channels = out
        height, width = ((n + 2 * padding - kernel) // stride + 1 for n in (height, width))
    layers.append(nn.Flatten())
    features = channels * height * width
    for out in arch.linears:
        layers += _hidden(nn.Linear(features, out), nn.BatchNorm1d(out), arch.batchnorm)
        features = out
    layers.append(nn.Linear(features, N_CLASSES))
    return nn.Sequential(*layers)


def _hidden(layer: nn.Module, batchnorm: nn.Module, use_batchnorm: bool) -> list[nn.Module]:
    return [layer, batchnorm, nn.ReLU()] if use_batchnorm else [layer, nn.ReLU()]


def ibp_init(model: nn.Module) -> None:
    """Shi et al. 2021: hidden weights ~ N(0, sigma^2), sigma = sqrt(2 pi) / fan_in.

    This keeps the expected interval width constant from layer to layer at
    initialisation. The output layer keeps its default initialisation.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        for layer in layers[:-1]:
            fan_in = layer.weight[0].numel()
            layer.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
