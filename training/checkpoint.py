"""Checkpoints that ``torch.load(weights_only=True)`` can read, written atomically.

A checkpoint holds the model, optimiser and lr-scheduler states, the number of
finished epochs and every random-number state the run draws from (torch,
numpy, python and the data-order generator), stored as tensors and plain
types, so that a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save to a temporary file, then os.replace: a crash or interrupt during the write leaves the previous
    checkpoint as it was (and an interrupted write removes its temporary file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states(data_generator: torch.Generator) -> dict:
    """Every random state of the run as tensors and plain types."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "data": data_generator.get_state(),
    }


def restore_rng_states(states: dict, data_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    data_generator.set_state(states["data"])
