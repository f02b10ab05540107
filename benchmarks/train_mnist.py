"""Benchmark: IBP vs SABR (and the AbsCert baseline) certified training of a small MNIST network at eps 0.1 on CPU.

Trains std (the epoch-time reference), IBP, SABR and AbsCert with the same model,
schedule and number of epochs through the `train` CLI, then writes
OUT/results.json and OUT/results.md: natural, PGD and Box-certified accuracy on
the first --eval-subset test images, mean epoch times (robust epochs, i.e.
after the natural warm-up) and their ratio to a std epoch. The IBP and SABR
models are then certified on the same test images by `certify` with Box,
DeepPoly and MN-BaB (per-image timeout --certify-timeout), the paper's
comparison: which training method wins depends on the verifier. AbsCert's
model is certified the same way (soundly, through its input abstraction), and
its claimed certified accuracy (the clean bins classified correctly, i.e. its
natural accuracy) is set against the sound one per domain.

    python benchmarks/train_mnist.py --data-dir ../shared/data --jobs 2 --threads 1
    python benchmarks/train_mnist.py --methods abscert --merge benchmarks/results/train_mnist.json --threads 1

Methods whose run directory already holds summary.json are not retrained;
``--merge`` adds the rows of an earlier results.json for methods not run here.
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

import torch  # noqa: E402

from nncert.training.abscert import claimed_vs_sound  # noqa: E402
from nncert.training.trainer import read_metrics  # noqa: E402

METHODS = ("std", "ibp", "sabr", "abscert")
CERTIFIED_METHODS = ("ibp", "sabr", "abscert")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="MNIST folder (default: $NNCERT_DATA)")
    p.add_argument("--out", default=str(REPO / "runs" / "train_mnist"), help="results and run directories")
    p.add_argument("--model", default="cnn3", choices=("cnn3", "fc"))
    p.add_argument("--eps", default="0.1")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--methods", type=methods_value, default=METHODS, help="comma-separated subset of "
                                                                          + ",".join(METHODS))
    p.add_argument("--merge", help="an earlier results.json whose rows are kept for methods not run here")
    p.add_argument("--eval-subset", type=int, default=1000)
    p.add_argument("--subset", type=int, help="train on the first N images only (for a quick check)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, help="torch threads per run (1 with --jobs 2 on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certify-domains", default="box,deeppoly,mnbab", help="empty to skip certification")
    p.add_argument("--certify-timeout", type=float, default=10.0, help="seconds per image for MN-BaB")
    return p.parse_args(argv)


def methods_value(text: str) -> tuple[str, ...]:
    methods = tuple(m for m in text.split(",") if m)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"choose from {','.join(METHODS)}, got {text!r}")
    return methods


def train_command(args: argparse.Namespace, method: str) -> list[str]:
    command = [sys.executable, "-m", "nncert.cli.train", "--method", method, "--dataset", "mnist",
               "--model", args.model,
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
    command = [sys.executable, "-m", "nncert.cli.certify", str(run_dir / "model.onnx"), "--dataset", "mnist",
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


def claimed_vs_sound_of(args: argparse.Namespace, method: str) -> dict[str, dict]:
    """Per domain: AbsCert's claimed certified accuracy (clean bins correct) against certify's sound one."""
    rows = json.loads((Path(args.out) / method / "certify.json").read_text())["results"]
    out = {}
    for domain in (d for d in args.certify_domains.split(",") if d):
        mine = sorted((r for r in rows if r["domain"] == domain), key=lambda r: r["index"])
        claimed = torch.tensor([r["status"] != "misclassified" for r in mine])
        out[domain] = claimed_vs_sound(claimed, [r["status"] for r in mine])
    return out


def collect(args: argparse.Namespace, wall_times: dict[str, float], certified: dict[str, dict]) -> dict:
    out = Path(args.out)
    previous = json.loads(Path(args.merge).read_text()) if args.merge else {"results": {}}
    rows = {m: dict(r, merged_from=args.merge) for m, r in previous["results"].items() if m not in args.methods}
    for method in args.methods:
        summary = json.loads((out / method / "summary.json").read_text())
        rows[method] = {key: summary[key] for key in ("natural", "pgd", "box", "n", "onnx")}
        rows[method].update(epoch_time_s=robust_epoch_time(out / method), wall_time_s=wall_times[method])
        for domain, summary in certified.get(method, {}).items():
            rows[method][f"certified_{domain}"] = summary["certified"] / summary["n"]
            rows[method][f"mean_time_s_{domain}"] = summary["mean_time_s"]
        if method == "abscert" and method in certified:
            rows[method]["claimed_vs_sound"] = claimed_vs_sound_of(args, method)
    rows = {m: rows[m] for m in METHODS if m in rows}
    for row in rows.values():
        row["epoch_time_vs_std"] = row["epoch_time_s"] / rows["std"]["epoch_time_s"] if "std" in rows else None
    config = json.loads((out / args.methods[-1] / "config.json").read_text())
    return {"benchmark": "train_mnist", "model": args.model, "eps": args.eps, "epochs": args.epochs,
            "jobs": args.jobs, "threads": args.threads, "certify_domains": args.certify_domains,
            "certify_timeout_s": args.certify_timeout, "config": config["config"],
            "versions": config["versions"], "merged_from": args.merge,
            "merged_config": previous.get("config", previous.get("sabr_config")), "results": rows}


def markdown(result: dict) -> str:
    domains = [d for d in result["certify_domains"].split(",") if d]
    lines = [f"MNIST eps {result['eps']}, {result['model']}, {result['epochs']} epochs, "
             f"{next(iter(result['results'].values()))['n']} test images, {result['jobs']} job(s) x "
             f"{result['threads'] or 'default'} thread(s); MN-BaB timeout {result['certify_timeout_s']} s", "",
             "| method | natural | PGD | Box-certified (training eval) | "
             + "".join(f"{d} certified | " for d in domains)
             + "epoch time (s) | vs std epoch | wall time (min) |",
             "|---|---|---|---|" + "---|" * len(domains) + "---|---|---|"]
    for method, r in result["results"].items():
        cells = "".join(f"{r[f'certified_{d}']:.1%} ({r[f'mean_time_s_{d}']:.2f} s) | " if f"certified_{d}" in r
                        else "- | " for d in domains)
        ratio = f"{r['epoch_time_vs_std']:.1f}x" if r.get("epoch_time_vs_std") is not None else "-"
        lines.append(f"| {method} | {r['natural']:.1%} | {r['pgd']:.1%} | {r['box']:.1%} | {cells}"
                     f"{r['epoch_time_s']:.1f} | {ratio} | {r['wall_time_s'] / 60:.1f} |")
    claims = {m: r["claimed_vs_sound"] for m, r in result["results"].items() if "claimed_vs_sound" in r}
    if claims:
        lines += ["", "| method | domain | claimed (AbsCert's check) | sound certified | claimed, not certified "
                  "| claimed, refuted by a counterexample |", "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {d} | {c['claimed']:.1%} | {c['sound']:.1%} | {c['gap']} | {c['refuted']} |"
                  for m, per_domain in claims.items() for d, c in per_domain.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        # the slowest first, so that parallel jobs finish together
        wall_times = dict(zip(args.methods[::-1], pool.map(lambda m: run(args, m), args.methods[::-1])))
    certified = ({m: certify(args, m) for m in args.methods if m in CERTIFIED_METHODS}
                 if args.certify_domains else {})
    result = collect(args, wall_times, certified)
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (Path(args.out) / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
