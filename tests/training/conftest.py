"""Shared fixtures: the data folder ($NNCERT_DATA, else the repo's ../shared/data) and cached datasets."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from nncert.training import trainer
from nncert.training.datasets import load_dataset

REPO_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _data_dir() -> Path | None:
    for candidate in (os.environ.get("NNCERT_DATA"), REPO_DATA):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_dir()
    if root is None:
        pytest.skip("MNIST not found: set NNCERT_DATA or provide ../shared/data")
    return root


_cached_load = functools.cache(load_dataset)


@pytest.fixture
def fast_data(data_dir, monkeypatch) -> Path:
    """The data folder, with datasets loaded once per test session."""
    monkeypatch.setattr(trainer, "load_dataset", _cached_load)
    return data_dir


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: small batches gain nothing from two, and busy shared machines lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_args(out: Path, data_dir: Path, method: str = "sabr", model: str = "cnn3", epochs: int = 1,
               *extra: str) -> list[str]:
    """CLI arguments of a tiny run: 64 images in 2 batches, eps ramped over the first epoch."""
    return ["--method", method, "--dataset", "mnist", "--model", model, "--eps", "0.1", "--out", str(out),
            "--data-dir", str(data_dir), "--subset", "64", "--batch-size", "32", "--epochs", str(epochs),
            "--warmup-epochs", "0", "--ramp-epochs", "1", "--lr-milestones", "1", "--pgd-steps", "2",
            "--val-size", "16", "--eval-subset", "16", "--eval-pgd-steps", "3", "--widths", "16,16",
            "--quiet", *extra]
