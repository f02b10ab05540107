"""Data-parallel processes started by torchrun: process group, rank helpers, synchronised BatchNorm.

``torchrun --nproc-per-node N ...`` (``python -m torch.distributed.run``) starts
N processes and tells each its place through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). :func:`process_group`
joins them into torch.distributed's process group (gloo on CPU, nccl on
CUDA, one GPU per process) for the duration of a command; without torchrun
every helper here behaves as for a single process (rank 0 of 1).

Training is data parallel with one *global* batch of B samples split into N
per-process batches of B / N. Everything that mixes samples of a batch is made
global so that N processes compute what one process computes on the global
batch: DistributedDataParallel averages the gradients of the per-process mean
losses, and the BatchNorm statistics (of the forward pass and of the Box
propagation of IBP / SABR) are means over all N per-process batches
(:func:`sync_moments`, :class:`SyncBatchNorm2d`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the outputs."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This process's device: with torchrun, ``cuda`` means the GPU numbered LOCAL_RANK on this machine."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextmanager
def process_group(device: torch.device, backend: str | None = None,
                  timeout: timedelta | None = None) -> Iterator[torch.device]:
    """Joins torchrun's process group while the block runs (nothing to do without torchrun).

    Yields this process's device. The backend is nccl for CUDA devices and
    gloo otherwise, unless ``backend`` says; ``timeout`` bounds how long a
    collective (e.g. a barrier) waits for the slowest process.
    """
    device = local_device(device)
    if not launched():
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, timeout=timeout, device_id=device if backend == "nccl" else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_main(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` run by rank 0 only; every rank returns its result, or raises its exception."""
    if world_size() == 1:
        return fn(*args)
    box: list = [None]
    if is_main():
        try:
            box = [(fn(*args), None)]
        except Exception as e:  # handed to every rank, raised there
            box = [(None, e)]
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise error
    return result


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the processes (the values themselves for one process)."""
    if world_size() == 1:
        return values
    total = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return dict(zip(values, (total / world_size()).tolist()))


def _collective_device() -> torch.device:
    """Where tensors of a collective live: nccl reduces GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its adjoint: the gradient of every rank's copy is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sync_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance (C,) of the global batch from those of the per-process batches.

    With N equal per-process batches: mean = (1/N) sum_r mean_r and
    var = (1/N) sum_r (var_r + mean_r^2) - mean^2. Differentiable: the
    gradient reaches every process's samples as in one process.
    """
    n = world_size()
    if n == 1:
        return mean, var
    moments = _SumOverRanks.apply(torch.cat([mean, var + mean ** 2])) / n
    mean, second = moments.chunk(2)
    return mean, second - mean ** 2


def sync_batch_stats(stats: dict[nn.Module, tuple[Tensor, Tensor]]) -> dict[nn.Module, tuple[Tensor, Tensor]]:
    """Batch statistics recorded per process (domains.from_torch.record_batch_stats) made global."""
    return {module: sync_moments(*moments) for module, moments in stats.items()}


class _SyncBatchNorm:
    """BatchNorm whose training-mode statistics are those of the global batch (all processes).

    torch's nn.SyncBatchNorm does the same on GPUs only; this one runs on any
    device and backend and stays a BatchNorm1d / 2d subclass, so the IR
    conversion, BatchNorm folding and checkpoints treat it like BatchNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = sync_moments(x.mean(dims), x.var(dims, unbiased=False))
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), x.numel() // x.shape[1] * world_size())
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else y

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """As F.batch_norm does: exponential averages with momentum, the variance unbiased (count / (count - 1))."""
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        with torch.no_grad():
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * count / max(count - 1, 1), momentum)


class SyncBatchNorm1d(_SyncBatchNorm, nn.BatchNorm1d):
    pass


class SyncBatchNorm2d(_SyncBatchNorm, nn.BatchNorm2d):
    pass


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm1d / 2d replaced, in place, by its synchronised version (same state)."""
    for name, child in model.named_children():
        kind = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}.get(type(child))
        if kind is None:
            sync_batchnorm(child)
            continue
        synced = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                      device=child.running_mean.device if child.running_mean is not None else None)
        synced.load_state_dict(child.state_dict())
        synced.train(child.training)
        setattr(model, name, synced)
    return model


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes run, else itself.

    Buffers are not broadcast at every forward: the synchronised BatchNorm
    keeps the running statistics equal on every rank.
    """
    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                               forward_sync_buffers=False)


def seed_epoch(seed: int, epoch: int, generator: torch.Generator) -> None:
    """Seed torch's random numbers (PGD starts) and ``generator`` (augmentation) for ``epoch`` on this rank.

    Each (seed, epoch, rank) has its own stream, so ranks draw independently
    and a resumed run, with any number of processes, draws what an
    uninterrupted one with as many processes draws.
    """
    value = hash((seed, epoch, rank())) % 2 ** 62  # ints hash the same in every Python process
    torch.manual_seed(value)
    generator.manual_seed(value + 1)
