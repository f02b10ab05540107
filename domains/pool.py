"""Open subproblems of a branch-and-bound: batches of stacked tensors and a preallocated pool of them.

Both searches (ReLU splitting in :mod:`domains.bab`, input splitting in
:mod:`domains.input_bab`) keep their subproblems as a dataclass whose fields
are tensors (or dicts of tensors or of tensor pairs) with the batch as their
first dim, plus a ``depth`` (N,). :class:`Batch` gives such a dataclass its
batch operations; :class:`Pool` stores the open ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import TypeVar

import torch
from torch import Tensor

B = TypeVar("B", bound="Batch")


def _apply(fn: Callable[[Tensor], Tensor], value):
    if isinstance(value, dict):
        return {k: _apply(fn, v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(fn(v) for v in value)
    return fn(value)


def _combine(fn: Callable[[list[Tensor]], Tensor], values: list):
    """``fn`` over corresponding tensors of equally structured values."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _combine(fn, [v[k] for v in values]) for k in first}
    if isinstance(first, tuple):
        return tuple(fn([v[i] for v in values]) for i in range(len(first)))
    return fn(values)


class Batch:
    """Batch operations for a dataclass of batched tensors (batch first in every tensor; a ``depth`` field)."""

    depth: Tensor

    def __len__(self) -> int:
        return self.depth.shape[0]

    def tensors(self) -> list[Tensor]:
        out: list[Tensor] = []
        for f in fields(self):
            _apply(out.append, getattr(self, f.name))
        return out

    def row_bytes(self) -> int:
        """Bytes of one subproblem: the element sizes of one row of every tensor, summed."""
        return sum(t[0].numel() * t.element_size() for t in self.tensors())

    def map(self: B, fn: Callable[[Tensor], Tensor]) -> B:
        return type(self)(**{f.name: _apply(fn, getattr(self, f.name)) for f in fields(self)})

    def select(self: B, index: Tensor) -> B:
        return self.map(lambda t: t[index])

    def repeat(self: B, times: int) -> B:
        return self.map(lambda t: t.repeat(times, *[1] * (t.dim() - 1)))

    @classmethod
    def zip(cls, fn: Callable[[list[Tensor]], Tensor], parts: list[B]) -> B:
        """Combine corresponding tensors of several batches with ``fn``."""
        return cls(**{f.name: _combine(fn, [getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def cat(cls, parts: list[B]) -> B:
        return cls.zip(torch.cat, parts)


class Pool:
    """Open subproblems in preallocated storage: pushing and popping cost O(batch), not O(queue).

    ``key(batch)`` (N,) orders best-first (lowest first). With ``max_memory``
    (bytes) the pool holds at most ``capacity = max_memory // row_bytes``
    subproblems (``row_bytes``: one subproblem's tensors, as ``like``'s); the
    storage doubles as needed but never beyond it.
    """

    def __init__(self, like: Batch, key: Callable[[Batch], Tensor], max_memory: int | None = None):
        self.key = key
        self.row_bytes = like.row_bytes()
        self.capacity = None if max_memory is None else max(max_memory // self.row_bytes, 1)
        self.store = like.select(torch.zeros(0, dtype=torch.long, device=like.depth.device))
        self.valid = torch.zeros(0, dtype=torch.bool, device=like.depth.device)

    def __len__(self) -> int:
        return int(self.valid.sum())

    def room(self) -> float:
        """How many more subproblems fit."""
        return math.inf if self.capacity is None else self.capacity - len(self)

    def stats(self) -> dict[str, int]:
        """The bytes of one subproblem and, with a cap, the capacity: for a search's statistics."""
        return {"row_bytes": self.row_bytes, **({} if self.capacity is None else {"queue_capacity": self.capacity})}

    def push(self, sub: Batch) -> None:
        if len(sub) > self.room():
            raise ValueError(f"pool of capacity {self.capacity} holds {len(self)}: no room for {len(sub)}")
        free = torch.nonzero(~self.valid).flatten()
        if len(free) < len(sub):
            grow = max(len(sub) - len(free), len(self.valid))
            if self.capacity is not None:
                grow = min(grow, self.capacity - len(self.valid))
            filler = sub.select(torch.zeros(grow, dtype=torch.long, device=self.valid.device))
            self.store = type(sub).cat([self.store, filler])
            self.valid = torch.cat([self.valid, torch.zeros(grow, dtype=torch.bool, device=self.valid.device)])
            free = torch.nonzero(~self.valid).flatten()
        slots = free[:len(sub)]
        type(sub).zip(lambda ts: ts[0].index_copy_(0, slots, ts[1]), [self.store, sub])
        self.valid[slots] = True

    def pop(self, k: int, depth_first: bool) -> Batch:
        """The k open subproblems with the lowest key (or the deepest ones)."""
        key = -self.store.depth.to(torch.float64) if depth_first else self.key(self.store).to(torch.float64)
        key = torch.where(self.valid, key, torch.full_like(key, torch.inf))
        idx = torch.topk(key, min(k, len(self)), largest=False).indices
        self.valid[idx] = False
        return self.store.select(idx)

    def take(self, batch_size: int, max_queue: int) -> Batch:
        """The next batch to branch: up to ``batch_size`` best-first, depth-first beyond ``max_queue`` open
        subproblems. Each taken subproblem frees its slot and may add two children, so near the capacity it
        takes only as many as the room left (at least one), depth-first."""
        size = max(min(batch_size, self.room()), 1)
        return self.pop(size, depth_first=len(self) > max_queue or size < batch_size)
