"""Data-parallel training: 2 gloo processes on the halves of a batch compute what one process computes on it.

One spawned pair checks the building blocks exactly (gradients, BatchNorm
statistics, losses of std and ibp); the torchrun test runs `train` end to end
and resumes the run in one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from nncert.cli.train import main
from nncert.training import distributed
from nncert.training.config import TrainConfig
from nncert.training.methods import BatchSetting
from nncert.training.models import build_model, ibp_init
from nncert.training.trainer import Objective, read_metrics
from tests.training.conftest import train_args

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"std": BatchSetting(0.0, natural=True, reg_weight=0.0),
            "ibp": BatchSetting(0.05, natural=False, reg_weight=0.0)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _step(method: str, world: int, rank: int) -> dict:
    """One forward / backward of cnn5 (BatchNorm everywhere) on this rank's half of the batch."""
    torch.manual_seed(0)
    model = build_model("cnn5", "mnist")
    ibp_init(model)
    if world > 1:
        distributed.sync_batchnorm(model)
    config = TrainConfig(method=method, dataset="mnist", model="cnn5", eps=0.05, out="unused").resolved()
    objective = distributed.data_parallel(Objective(model, config), torch.device("cpu"))
    x, y = _batch()
    terms = objective(x[rank::world], y[rank::world], SETTINGS[method])
    loss = sum(terms.values())
    loss.backward()
    return {"loss": distributed.mean_over_ranks({"loss": loss.item()})["loss"],
            "grads": {name: p.grad.clone() for name, p in model.named_parameters()},
            "buffers": {name: b.clone() for name, b in model.named_buffers()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        assert distributed.world_size() == world and distributed.rank() == rank
        torch.save({method: _step(method, world, rank) for method in SETTINGS}, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("method", list(SETTINGS))
def test_two_processes_compute_the_gradients_of_the_whole_batch(two_processes, method):
    single = _step(method, 1, 0)
    # biases before a BatchNorm have a zero gradient up to rounding: tolerances relative to the largest gradient
    scale = max(grad.abs().max().item() for grad in single["grads"].values())
    for rank in two_processes:
        result = rank[method]
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for name, grad in single["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
        for name, buffer in single["buffers"].items():  # BatchNorm running statistics of the global batch
            torch.testing.assert_close(result["buffers"][name], buffer, rtol=1e-5, atol=1e-6, msg=name)


def test_sync_batchnorm_keeps_the_state_and_single_process_behaviour():
    torch.manual_seed(0)
    model = build_model("cnn5", "mnist")
    reference = build_model("cnn5", "mnist")
    reference.load_state_dict(model.state_dict())
    distributed.sync_batchnorm(model)
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model(x), reference(x))  # one process: plain BatchNorm
    assert isinstance(model[2], torch.nn.BatchNorm2d) and isinstance(model[2], distributed.SyncBatchNorm2d)


def _torchrun_train(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "nncert.cli.train", "--", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_train_equals_one_process_and_resumes_with_another_world_size(tmp_path, fast_data):
    """ibp on cnn5 (BatchNorm): epoch 1 on 2 processes, epoch 2 resumed in 1, epoch 3 resumed on 2 again,
    against 3 epochs in one process (no regulariser: Shi et al.'s terms are not means over samples)."""
    extra = ("--reg-lambda", "0", "--ramp-epochs", "0", "--threads", "1")
    straight, parallel = tmp_path / "straight", tmp_path / "parallel"
    assert main(train_args(straight, fast_data, "ibp", "cnn5", 3, *extra)) == 0
    expected = read_metrics(straight)

    done = _torchrun_train(train_args(parallel, fast_data, "ibp", "cnn5", 1, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Box-certified") == 1  # rank 0 alone reports and writes
    assert json.loads((parallel / "config.json").read_text())["processes"] == 2
    assert main(train_args(parallel, fast_data, "ibp", "cnn5", 2, *extra, "--resume")) == 0
    done = _torchrun_train(train_args(parallel, fast_data, "ibp", "cnn5", 3, *extra, "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = read_metrics(parallel)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for got, want in zip(metrics, expected):
        for key in ("train_loss", "train_ce", "val_natural", "val_pgd", "val_box"):
            assert got[key] == pytest.approx(want[key], rel=1e-4), (got["epoch"], key)
    assert [r["processes"] for r in json.loads((parallel / "config.json").read_text())["resumed"]] == [1, 2]
