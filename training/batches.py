"""Shuffled mini-batches, this process's share of each global batch, with optional augmentation.

The order of an epoch is torch's DistributedSampler's: a permutation drawn
from (seed, epoch), of which process r of N takes positions r, r + N, ...
Taken B / N at a time, the N processes' k-th batches together are positions
kB .. (k+1)B - 1 of the permutation: the k-th batch of one process with batch
size B. So the global batches do not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

from nncert.training.datasets import Dataset

CROP_PADDING = 4


def n_batches(n_samples: int, batch_size: int) -> int:
    """Batches per epoch: an incomplete last batch is dropped unless it is the only one."""
    return max(1, n_samples // batch_size)


def shuffled_batches(data: Dataset, batch_size: int, seed: int, epoch: int, generator: torch.Generator,
                     augment: bool = False, rank: int = 0, world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Process ``rank``'s part (x (B / N, C, H, W), y (B / N,)) of each global batch of size B of ``epoch``.

    Augmentation draws from ``generator``.
    """
    sampler = DistributedSampler(range(len(data)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    size = batch_size // world_size
    for i in range(n_batches(len(data), batch_size)):
        index = order[i * size:(i + 1) * size]
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
