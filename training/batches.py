"""Shuffled mini-batches drawn from a generator the run checkpoints, with optional augmentation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from training.datasets import Dataset

CROP_PADDING = 4


def n_batches(n_samples: int, batch_size: int) -> int:
    """Batches per epoch: an incomplete last batch is dropped unless it is the only one."""
    return max(1, n_samples // batch_size)


def shuffled_batches(data: Dataset, batch_size: int, generator: torch.Generator,
                     augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of (x (B, C, H, W), y (B,)) in a random order drawn from ``generator``."""
    order = torch.randperm(len(data), generator=generator)
    for i in range(n_batches(len(data), batch_size)):
        index = order[i * batch_size:(i + 1) * batch_size]
        x = data.x[index]
        yield (random_crop_flip(x, generator) if augment else x), data.y[index]


def random_crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and random crops of the zero-padded images (N, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, [CROP_PADDING] * 4)
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator).tolist()
    return torch.stack([img[:, dy:dy + h, dx:dx + w] for img, (dy, dx) in zip(padded, offsets)])
