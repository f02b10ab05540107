"""The training loop: std, pgd, ibp, sabr, mtl-ibp and abscert through one loop, with checkpoints, metrics and export.

A run directory holds:

- ``config.json``: every hyper-parameter, the command line(s) and library versions;
- ``checkpoint.pt``: written atomically after every epoch, resumed with ``resume=True``;
- ``metrics.jsonl``: one JSON line per epoch (losses, validation accuracies, eps, lr, times);
- ``model.onnx``: the final model, normalisation inside, BatchNorm folded;
- ``summary.json``: natural, PGD and Box-certified accuracy on the first ``eval_subset`` test images (default
  1000; every part of the evaluation, PGD included, runs on these only).

Under ``torchrun --nproc-per-node N`` the same loop runs data parallel
(training.distributed): each process trains on B / N samples of every global
batch of B, DistributedDataParallel averages the gradients, BatchNorm
statistics are global, and only rank 0 evaluates and writes the run directory.
A checkpoint does not depend on N, so a run can resume with another N.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from nncert.training import distributed
from nncert.training.batches import n_batches, shuffled_batches
from nncert.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from nncert.training.config import CERTIFIED, ConfigError, TrainConfig, check_resumable
from nncert.training.datasets import SHAPE, Dataset, load_dataset
from nncert.training.evaluate import evaluate
from nncert.training.export import export_onnx
from nncert.training.methods import BatchSetting, method_loss
from nncert.training.models import build_model, ibp_init
from nncert.training.regularizers import l1_penalty
from nncert.training.schedules import EpsSchedule, lr_scheduler

CHECKPOINT, CONFIG, METRICS = "checkpoint.pt", "config.json", "metrics.jsonl"
ONNX, SUMMARY = "model.onnx", "summary.json"
TIMING_FIELDS = ("epoch_time_s", "eval_time_s")


class Run:
    """The state of a training run: model (and its data-parallel objective), optimiser, lr schedule and the
    augmentation generator."""

    def __init__(self, config: TrainConfig, device: torch.device):
        _seed_everything(config.seed)
        self.config = config
        self.device = device
        self.model = build_model(config.model, config.dataset, config.widths, config.bin_width)
        if config.method in CERTIFIED:
            ibp_init(self.model)
        if distributed.world_size() > 1:
            distributed.sync_batchnorm(self.model)
        self.model.to(device)
        self.objective = distributed.data_parallel(Objective(self.model, config), device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = lr_scheduler(self.optimizer, config.lr_milestones, config.lr_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0  # finished epochs

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "rng": rng_states(self.generator)}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        restore_rng_states(state["rng"], self.generator)


class Objective(nn.Module):
    """The loss terms of a batch (method loss and L1) as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        super().__init__()
        self.model, self.config = model, config

    def forward(self, x: Tensor, y: Tensor, setting: BatchSetting) -> dict[str, Tensor]:
        config = self.config
        terms = method_loss(config.method, self.model, x, y, setting, config.lam, config.pgd_steps, config.reg_tol,
                            mtl_alpha=config.mtl_alpha)
        if config.l1 > 0:
            terms["l1"] = config.l1 * l1_penalty(self.model)
        return terms


def train(config: TrainConfig, command: str | None = None) -> dict | None:
    """Train as ``config`` says (resuming if ``config.resume``); returns the final summary (None on ranks > 0)."""
    config = config.resolved()
    with distributed.process_group(_device(config.device)) as device:
        return _train(config, device, command)


def _train(config: TrainConfig, device: torch.device, command: str | None) -> dict | None:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.batch_size % distributed.world_size():
        raise ConfigError(f"--batch-size {config.batch_size} is not divisible by the {distributed.world_size()} "
                          "processes (it is the global batch, split evenly among them)")
    out = Path(config.out)
    distributed.on_main(_check_run_dir, out, config.resume)
    train_data = load_dataset(config.dataset, "train", config.data_dir).subset(0, config.subset)
    test_data = load_dataset(config.dataset, "test", config.data_dir)
    run = Run(config, device)
    if config.resume:
        run.load(distributed.on_main(_resume, out, run.config, command))
    else:
        distributed.on_main(_start, out, config, command)

    steps = n_batches(len(train_data), config.batch_size)
    schedule = EpsSchedule.from_epochs(config.train_eps, config.warmup_epochs, config.ramp_epochs, steps)
    val_data = test_data.subset(0, config.val_size)
    while run.epoch < config.epochs:
        metrics = _epoch(run, train_data, val_data, schedule)
        if distributed.is_main():
            _append_json_line(out / METRICS, metrics)
            print(_epoch_line(metrics, config), flush=True)
            save_checkpoint(out / CHECKPOINT, run.state())
    if not distributed.is_main():
        return None

    export_onnx(run.model, out / ONNX, SHAPE[config.dataset])
    summary = _summary(run, test_data.subset(0, config.eval_subset), out)
    _write_json(out / SUMMARY, summary)
    return summary


def _epoch(run: Run, train_data: Dataset, val_data: Dataset, schedule: EpsSchedule) -> dict:
    """Train one epoch, step the lr schedule, evaluate on the validation subset."""
    config = run.config
    lr = run.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    losses, eps = _train_epoch(run, train_data, schedule)
    losses = distributed.mean_over_ranks(losses)
    train_time = time.perf_counter() - start
    run.scheduler.step()
    run.epoch += 1
    start = time.perf_counter()
    if not distributed.is_main():
        return {}
    val = evaluate(run.model, val_data, config.eps, config.batch_size, config.eval_pgd_steps,
                   config.eval_pgd_restarts, seed=config.seed + run.epoch, device=run.device,
                   progress=_progress_label(config, f"validation {run.epoch}/{config.epochs}"))
    return {"epoch": run.epoch, "eps": eps, "lr": lr, **losses, **{f"val_{k}": v for k, v in val.items()},
            "epoch_time_s": train_time, "eval_time_s": time.perf_counter() - start}


def _train_epoch(run: Run, data: Dataset, schedule: EpsSchedule) -> tuple[dict[str, float], float]:
    """Mean loss terms of the epoch (this process's batches) and the epsilon of its last batch."""
    config, model = run.config, run.model
    model.train()
    steps = n_batches(len(data), config.batch_size)
    totals = dict.fromkeys(("loss", "ce", "reg", "l1"), 0.0)
    distributed.seed_epoch(config.seed, run.epoch, run.generator)
    batches = shuffled_batches(data, config.batch_size, config.seed, run.epoch, run.generator, config.augment,
                               distributed.rank(), distributed.world_size())
    label = _progress_label(config, f"epoch {run.epoch + 1}/{config.epochs}")
    progress = tqdm(batches, total=steps, desc=label, leave=False, disable=label is None)
    for i, (x, y) in enumerate(progress):
        setting = _batch_setting(config, schedule, run.epoch * steps + i)
        terms = run.objective(x.to(run.device), y.to(run.device), setting)
        loss = sum(terms.values())
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        run.optimizer.step()
        for key, value in {"loss": loss, **terms}.items():
            totals[key] += value.item()
        progress.set_postfix(loss=f"{totals['loss'] / (i + 1):.4f}", eps=f"{setting.eps:.4f}")
    return {f"train_{k}": v / steps for k, v in totals.items()}, setting.eps


def _progress_label(config: TrainConfig, label: str) -> str | None:
    """``label`` when progress bars are shown (rank 0, on a terminal, not --quiet), else None."""
    return label if config.progress and sys.stderr.isatty() and distributed.is_main() else None


def _batch_setting(config: TrainConfig, schedule: EpsSchedule, step: int) -> BatchSetting:
    """Epsilon of the step; Shi et al.'s regularisers weigh reg_lambda (1 - eps / train_eps) during the ramp."""
    eps = schedule(step)
    reg_weight = config.reg_lambda * (1 - eps / config.train_eps) if config.method in CERTIFIED else 0.0
    return BatchSetting(eps, schedule.natural(step), reg_weight)


def _summary(run: Run, data: Dataset, out: Path) -> dict:
    config = run.config
    start = time.perf_counter()
    accuracy = evaluate(run.model, data, config.eps, config.batch_size, config.eval_pgd_steps,
                        config.eval_pgd_restarts, seed=config.seed, device=run.device,
                        progress=_progress_label(config, f"evaluation on {len(data)} test images"))
    return {"method": config.method, "dataset": config.dataset, "model": config.model, "eps": config.eps,
            "epochs": run.epoch, "n": len(data), **accuracy, "eval_time_s": time.perf_counter() - start,
            "onnx": str(out / ONNX)}


def _check_run_dir(out: Path, resume: bool) -> None:
    """A new run needs a directory without a checkpoint; --resume needs one with a checkpoint and config."""
    if resume and not ((out / CHECKPOINT).is_file() and (out / CONFIG).is_file()):
        raise ConfigError(f"--resume: no checkpoint and config.json in {out}")
    if not resume and (out / CHECKPOINT).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


def _start(out: Path, config: TrainConfig, command: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).write_text("")
    _write_json(out / CONFIG, {"config": config.to_json(), "command": command, "versions": versions(),
                               "processes": distributed.world_size(), "resumed": []})


def _resume(out: Path, config: TrainConfig, command: str | None) -> dict:
    """The checkpoint's state; keeps the metrics of the epochs it holds and records the resume in config.json."""
    record = json.loads((out / CONFIG).read_text())
    check_resumable(record["config"], config)
    state = load_checkpoint(out / CHECKPOINT)
    lines = (out / METRICS).read_text().splitlines() if (out / METRICS).exists() else []
    kept = [line for line in lines if line and json.loads(line)["epoch"] <= state["epoch"]]
    (out / METRICS).write_text("".join(line + "\n" for line in kept))
    record["config"] = config.to_json()
    record["resumed"].append({"command": command, "from_epoch": state["epoch"], "versions": versions(),
                              "processes": distributed.world_size()})
    _write_json(out / CONFIG, record)
    return state


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The epochs' metrics of a run directory."""
    return [json.loads(line) for line in (Path(run_dir) / METRICS).read_text().splitlines() if line]


def versions() -> dict[str, str]:
    """Versions of python, nncert and the libraries training depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("nncert", "torch", "numpy", "onnx"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = _source_version() if package == "nncert" else "not installed"
    return out


def _source_version() -> str:
    """nncert's version from pyproject.toml when running from a source checkout."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        return tomllib.loads(pyproject.read_text())["project"]["version"] + " (source)"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid --device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    return device


def _epoch_line(m: dict, config: TrainConfig) -> str:
    return (f"epoch {m['epoch']}/{config.epochs}  eps {m['eps']:.4f}  lr {m['lr']:.2e}  loss {m['train_loss']:.4f}"
            f"  | val natural {m['val_natural']:.1%}  pgd {m['val_pgd']:.1%}  box {m['val_box']:.1%}"
            f"  | {m['epoch_time_s']:.1f} s")


def _append_json_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
