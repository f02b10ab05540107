"""Checkpoints: every random state round-trips through torch.load(weights_only=True)."""

import random

import numpy as np
import torch

from nncert.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint


def _draws(generator: torch.Generator) -> tuple:
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random(),
            random.gauss(0, 1), torch.randperm(5, generator=generator).tolist())


def test_random_states_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"rng": rng_states(generator), "epoch": 4})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temporary file was renamed
    expected = _draws(generator)

    other = torch.Generator().manual_seed(99)
    state = load_checkpoint(path)
    restore_rng_states(state["rng"], other)
    assert state["epoch"] == 4
    assert _draws(other) == expected
