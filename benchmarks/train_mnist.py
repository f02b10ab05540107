"""Benchmark: IBP vs SABR certified training of a small MNIST network at eps 0.1 on CPU.

Trains std (the epoch-time reference), IBP and SABR with the same model,
schedule and number of epochs through the `train` CLI, then writes
OUT/results.json and OUT/results.md: natural, PGD and Box-certified accuracy on
the first --eval-subset test images, mean epoch times (robust epochs, i.e.
after the natural warm-up) and their ratio to a std epoch. The IBP and SABR
models are then certified on the same test images by `certify` with Box,
DeepPoly and MN-BaB (per-image timeout --certify-timeout), the paper's
comparison: which training method wins depends on the verifier.

    python benchmarks/train_mnist.py --data-dir ../shared/data --jobs 2 --threads 1

Methods whose run directory already holds summary.json are not retrained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.trainer import read_metrics  # noqa: E402

METHODS = ("std", "ibp", "sabr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="MNIST folder (default: $NNCERT_DATA)")
    p.add_argument("--out", default=str(REPO / "runs" / "train_mnist"), help="results and run directories")
    p.add_argument("--model", default="cnn3", choices=("cnn3", "fc"))
    p.add_argument("--eps", default="0.1")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--eval-subset", type=int, default=1000)
    p.add_argument("--subset", type=int, help="train on the first N images only (for a quick check)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, help="torch threads per run (1 with --jobs 2 on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certify-domains", default="box,deeppoly,mnbab", help="empty to skip certification")
    p.add_argument("--certify-timeout", type=float, default=10.0, help="seconds per image for MN-BaB")
    return p.parse_args(argv)


def train_command(args: argparse.Namespace, method: str) -> list[str]:
    command = [sys.executable, "-m", "cli.train", "--method", method, "--dataset", "mnist", "--model", args.model,
               "--eps", args.eps, "--epochs", str(args.epochs), "--eval-subset", str(args.eval_subset),
               "--seed", str(args.seed), "--out", str(Path(args.out) / method), "--quiet"]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--subset", str(args.subset)] if args.subset else []
    return command


def run(args: argparse.Namespace, method: str) -> float:
    """Train one method (log in OUT/METHOD.log) unless it is done; returns the wall time in seconds."""
    out = Path(args.out)
    times_file = out / f"{method}.wall_time_s"
    if (out / method / "summary.json").exists() and times_file.exists():
        return float(times_file.read_text())
    start = time.perf_counter()
    with open(out / f"{method}.log", "w") as log:
        subprocess.run(train_command(args, method), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    times_file.write_text(str(time.perf_counter() - start))
    return float(times_file.read_text())


def certify(args: argparse.Namespace, method: str) -> dict:
    """certify's summary of the method's model on the evaluation images (resumes an interrupted run)."""
    run_dir = Path(args.out) / method
    command = [sys.executable, "-m", "cli.certify", str(run_dir / "model.onnx"), "--dataset", "mnist",
               "--eps", args.eps, "--num", str(args.eval_subset), "--domain", args.certify_domains,
               "--timeout", str(args.certify_timeout), "--seed", str(args.seed), "--json",
               str(run_dir / "certify.json"), "--resume", "--quiet"]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--threads", str(args.threads)] if args.threads else []
    with open(Path(args.out) / f"{method}.certify.log", "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((run_dir / "certify.json").read_text())["summary"]


def robust_epoch_time(run_dir: Path) -> float:
    """Mean training time of the epochs after the natural warm-up (all epochs for std)."""
    config = json.loads((run_dir / "config.json").read_text())["config"]
    metrics = read_metrics(run_dir)
    robust = [m for m in metrics if m["epoch"] > config["warmup_epochs"]] or metrics
    return sum(m["epoch_time_s"] for m in robust) / len(robust)


def collect(args: argparse.Namespace, wall_times: dict[str, float], certified: dict[str, dict]) -> dict:
    out = Path(args.out)
    rows = {}
    for method in METHODS:
        summary = json.loads((out / method / "summary.json").read_text())
        rows[method] = {key: summary[key] for key in ("natural", "pgd", "box", "n", "onnx")}
        rows[method].update(epoch_time_s=robust_epoch_time(out / method), wall_time_s=wall_times[method])
        for domain, summary in certified.get(method, {}).items():
            rows[method][f"certified_{domain}"] = summary["certified"] / summary["n"]
            rows[method][f"mean_time_s_{domain}"] = summary["mean_time_s"]
    for row in rows.values():
        row["epoch_time_vs_std"] = row["epoch_time_s"] / rows["std"]["epoch_time_s"]
    config = json.loads((out / "sabr" / "config.json").read_text())
    return {"benchmark": "train_mnist", "model": args.model, "eps": args.eps, "epochs": args.epochs,
            "jobs": args.jobs, "threads": args.threads, "certify_domains": args.certify_domains,
            "certify_timeout_s": args.certify_timeout, "sabr_config": config["config"],
            "versions": config["versions"], "results": rows}


def markdown(result: dict) -> str:
    domains = [d for d in result["certify_domains"].split(",") if d]
    lines = [f"MNIST eps {result['eps']}, {result['model']}, {result['epochs']} epochs, "
             f"{result['results']['sabr']['n']} test images, {result['jobs']} job(s) x "
             f"{result['threads'] or 'default'} thread(s); MN-BaB timeout {result['certify_timeout_s']} s", "",
             "| method | natural | PGD | Box-certified (training eval) | "
             + "".join(f"{d} certified | " for d in domains)
             + "epoch time (s) | vs std epoch | wall time (min) |",
             "|---|---|---|---|" + "---|" * len(domains) + "---|---|---|"]
    for method, r in result["results"].items():
        cells = "".join(f"{r[f'certified_{d}']:.1%} ({r[f'mean_time_s_{d}']:.2f} s) | " if f"certified_{d}" in r
                        else "- | " for d in domains)
        lines.append(f"| {method} | {r['natural']:.1%} | {r['pgd']:.1%} | {r['box']:.1%} | {cells}"
                     f"{r['epoch_time_s']:.1f} | {r['epoch_time_vs_std']:.1f}x | {r['wall_time_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        # the slowest first, so that parallel jobs finish together
        wall_times = dict(zip(METHODS[::-1], pool.map(lambda m: run(args, m), METHODS[::-1])))
    certified = {m: certify(args, m) for m in ("ibp", "sabr")} if args.certify_domains else {}
    result = collect(args, wall_times, certified)
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (Path(args.out) / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
