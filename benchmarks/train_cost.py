"""Benchmark: the cost of a certified-training epoch as a ratio to a standard epoch, side by side in one run.

For each dataset, trains every method for --epochs epochs at the full eps from
the first batch (no warm-up, no ramp) on the first --subset training images,
through the real training loop, in rounds: each round runs every method once,
so slow and busy phases of a shared machine hit all methods alike. The epoch
time of a method is the median over its rounds and epochs; the ratio divides
it by std's. sabr-1 is SABR with a one-step box search (--pgd-steps 1), to
show what the search's eight steps cost; pgd (adversarial training with the
same 8-step search) is a std step plus that search.

    python benchmarks/train_cost.py --data-dir ../shared/data --threads 1

writes benchmarks/results/train_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nncert.cli.train import eps_value  # noqa: E402
from nncert.training.config import TrainConfig  # noqa: E402
from nncert.training.trainer import read_metrics, train  # noqa: E402
from nncert.verifier.results import versions  # noqa: E402

# name -> (method, extra TrainConfig fields)
METHODS = {"std": ("std", {}), "pgd": ("pgd", {}), "ibp": ("ibp", {}), "sabr": ("sabr", {}),
           "sabr-1": ("sabr", {"pgd_steps": 1}), "mtl-ibp": ("mtl-ibp", {})}
SETTINGS = {"mnist": ("0.1", "cnn3"), "cifar10": ("2/255", "cnn3")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder with MNIST/ and cifar10/ (default: $NNCERT_DATA)")
    p.add_argument("--datasets", default="cifar10,mnist")
    p.add_argument("--subset", type=int, default=2048, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_cost"),
                   help="writes OUT.json and OUT.md")
    return p.parse_args(argv)


def epoch_times(args: argparse.Namespace, dataset: str, name: str, workdir: Path, round_: int) -> list[float]:
    """Training seconds of each epoch of one run of method ``name`` on ``dataset``."""
    method, extra = METHODS[name]
    eps, model = SETTINGS[dataset]
    config = TrainConfig(method=method, dataset=dataset, model=model, eps=eps_value(eps),
                         out=str(workdir / f"{dataset}_{name}_{round_}"), epochs=args.epochs, warmup_epochs=0,
                         ramp_epochs=0, subset=args.subset, val_size=1, eval_subset=1, eval_pgd_steps=1,
                         data_dir=args.data_dir, threads=args.threads, progress=False, **extra)
    with contextlib.redirect_stdout(io.StringIO()):  # the epoch lines
        train(config)
    return [m["epoch_time_s"] for m in read_metrics(config.out)]


def measure(args: argparse.Namespace) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            times: dict[str, list[float]] = {name: [] for name in METHODS}
            for round_ in range(args.rounds):
                for name in METHODS:
                    times[name] += epoch_times(args, dataset, name, Path(tmp), round_)
            std = statistics.median(times["std"])
            results[dataset] = {name: {"epoch_time_s": statistics.median(t), "vs_std": statistics.median(t) / std,
                                       "samples_s": t} for name, t in times.items()}
    return {"benchmark": "train_cost", "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "subset": args.subset,
            "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads, "torch_threads":
            torch.get_num_threads(), "settings": SETTINGS, "versions": versions(), "results": results}


def markdown(result: dict) -> str:
    names = list(METHODS)
    lines = [f"Epoch time as a ratio to a std epoch (median of {result['rounds']} rounds x {result['epochs']} "
             f"epoch(s) on {result['subset']} training images, batch size of the paper's recipe, "
             f"{result['threads']} thread(s), methods interleaved; {result['date']}, commit "
             f"{result['versions']['nncert_commit']})", "",
             "| dataset (eps, model) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for dataset, rows in result["results"].items():
        eps, model = result["settings"][dataset]
        cells = [f"{rows[n]['vs_std']:.1f}x ({rows[n]['epoch_time_s']:.1f} s)" for n in names]
        lines.append(f"| {dataset} ({eps}, {model}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
