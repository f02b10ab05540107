"""Benchmark: std, IBP, SABR and MTL-IBP certified training of a small CIFAR-10 network at 2/255 and 8/255 on CPU.

The setting of the SABR paper (Mueller et al., ICLR 2023), reduced to CPU scale:
one small convolutional network, a subset of the training set and a few epochs,
the same schedule for every certified method (the paper's recipe scaled to
--epochs by `train`). std is trained once (the epoch-time reference, evaluated
at every eps); IBP, SABR (lambda 0.1 at 2/255, 0.7 at 8/255: the paper's) and
MTL-IBP (alpha 4e-3 at 2/255, 0.5 at 8/255: De Palma et al.'s) once per eps.
Every model is then certified by `certify`:

- with Box and DeepPoly on the first --certify-num images of the test set
  (the JPEG copy in $NNCERT_DATA is lossy: accuracies are not comparable to
  published CIFAR-10 numbers);
- with Box, DeepPoly and MN-BaB (timeout --certify-timeout per image) on the
  exact 100 images of ERAN's cifar10_test.csv (converted to an --inputs .npz).

OUT/results.json and OUT/results.md hold natural, PGD and certified accuracy
per domain, mean robust epoch times and their ratio to a std epoch; the ONNX
models are copied to --models-dir as cifar10_MODEL_METHOD_2_255.onnx.

    python benchmarks/train_cifar.py --data-dir ../shared/data --threads 1

Runs whose directory holds summary.json are not retrained and certification
resumes, so an interrupted benchmark continues where it stopped. --stage train
or certify runs one half only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.train_mnist import robust_epoch_time  # noqa: E402
from nncert.training.datasets import SHAPE, load_eran_csv  # noqa: E402

METHODS = ("std", "ibp", "sabr", "mtl-ibp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder with cifar10/ and eran/ (default: $NNCERT_DATA)")
    p.add_argument("--out", default=str(REPO / "runs" / "train_cifar"), help="results and run directories")
    p.add_argument("--models-dir", default=str(REPO / "benchmarks" / "models"), help="where the ONNX models go")
    p.add_argument("--model", default="cnn3", choices=("cnn3", "cnn5", "cnn7"))
    p.add_argument("--eps", default="2/255,8/255", help="comma-separated radii")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--epochs", type=int, default=8, help="0: the paper's recipe (160 epochs at 2/255, 180 at 8/255)")
    p.add_argument("--subset", type=int, default=10000, help="train on the first N training images (0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", choices=("all", "train", "certify"), default="all")
    p.add_argument("--certify-num", type=int, default=1000, help="JPEG test images for box and deeppoly (0: skip)")
    p.add_argument("--certify-domains", default="box,deeppoly")
    p.add_argument("--eran-csv", help="ERAN's cifar10_test.csv (default: DATA_DIR/eran/cifar10_test.csv)")
    p.add_argument("--eran-domains", default="box,deeppoly,mnbab")
    p.add_argument("--eran-num", type=int, default=100, help="ERAN images certified (all 100 by default)")
    p.add_argument("--certify-timeout", type=float, default=5.0, help="seconds per image for MN-BaB")
    args = p.parse_args(argv)
    args.eps = [e for e in args.eps.split(",") if e]
    args.methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in args.methods):
        p.error(f"--methods: choose from {','.join(METHODS)}")
    return args


def eps_tag(eps: str) -> str:
    """'2/255' -> '2_255', '0.1' -> '0.1' (for file names)."""
    return eps.replace("/", "_")


def runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(method, eps) of every training run: std once (at the first eps), the others at every eps."""
    return [(m, e) for e in args.eps for m in args.methods if m != "std" or e == args.eps[0]]


def run_dir(args: argparse.Namespace, method: str, eps: str) -> Path:
    return Path(args.out) / f"{method}_{eps_tag(eps)}"


def train_command(args: argparse.Namespace, method: str, eps: str) -> list[str]:
    command = [sys.executable, "-m", "nncert.cli.train", "--method", method, "--dataset", "cifar10",
               "--model", args.model,
               "--eps", eps, "--eval-subset", "1000", "--seed", str(args.seed),
               "--threads", str(args.threads), "--out", str(run_dir(args, method, eps)), "--quiet"]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--subset", str(args.subset)] if args.subset else []
    command += ["--epochs", str(args.epochs)] if args.epochs else []
    return command


def train(args: argparse.Namespace, method: str, eps: str) -> float:
    """Train one run (log beside it) unless it is done; returns its wall time in seconds."""
    out = run_dir(args, method, eps)
    wall = out.with_suffix(".wall_time_s")
    if (out / "summary.json").exists() and wall.exists():
        return float(wall.read_text())
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts again: its epoch times must be comparable
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(train_command(args, method, eps), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall.write_text(str(time.perf_counter() - start))
    return float(wall.read_text())


def eran_inputs(args: argparse.Namespace) -> Path:
    """ERAN's 100 CIFAR-10 test images as certify's --inputs .npz (x (100, 3, 32, 32) in [0, 1], y (100,))."""
    csv = Path(args.eran_csv) if args.eran_csv else Path(args.data_dir or ".") / "eran" / "cifar10_test.csv"
    npz = Path(args.out) / "eran_cifar10_test.npz"
    if not npz.exists():
        data = load_eran_csv(csv, SHAPE["cifar10"])
        np.savez(npz, x=data.x.numpy(), y=data.y.numpy())
    return npz


def certify(args: argparse.Namespace, model: Path, eps: str, name: str, source: list[str], domains: str) -> dict:
    """certify's summary of ``model`` at ``eps`` on ``source`` (resumes an interrupted run)."""
    out = model.parent / f"certify_{name}_{eps_tag(eps)}.json"
    command = [sys.executable, "-m", "nncert.cli.certify", str(model), "--eps", eps, *source, "--domain", domains,
               "--timeout", str(args.certify_timeout), "--seed", str(args.seed), "--threads", str(args.threads),
               "--json", str(out), "--quiet"] + (["--resume"] if out.exists() else [])
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(out.read_text())["summary"]


def certify_run(args: argparse.Namespace, method: str, eps: str, name: str) -> dict[str, dict]:
    """Summaries of the run's model on the image set ``name`` ('eran' or 'jpeg') at every eps it is evaluated at
    (std: all of them)."""
    model = run_dir(args, method, eps) / "model.onnx"
    if name == "eran":
        source, domains = ["--inputs", str(eran_inputs(args)), "--num", str(args.eran_num)], args.eran_domains
    else:
        source = ["--dataset", "cifar10", "--num", str(args.certify_num)]
        source += ["--data-dir", args.data_dir] if args.data_dir else []
        domains = args.certify_domains
    return {e: certify(args, model, e, name, source, domains) for e in (args.eps if method == "std" else [eps])}


def row(summary: dict) -> dict:
    """Accuracies of a certify summary: natural, PGD (natural minus the attack's counterexamples), certified."""
    first = next(iter(summary.values()))
    n = first["n"]
    out = {"n": n, "natural": first["natural"] / n,
           "pgd": (first["natural"] - summary.get("box", first)["falsified"]) / n}
    for domain, s in summary.items():
        out[f"certified_{domain}"] = s["certified"] / n
        out[f"mean_time_s_{domain}"] = s["mean_time_s"]
        out[f"unknown_{domain}"] = s["unknown"] + s["timeout"]
    return out


def collect(args: argparse.Namespace, wall_times: dict, certified: dict) -> dict:
    results = []
    std_epoch = None
    for method, eps in runs(args):
        out = run_dir(args, method, eps)
        config = json.loads((out / "config.json").read_text())["config"]
        epoch = robust_epoch_time(out)
        std_epoch = epoch if method == "std" else std_epoch
        for e, sets in certified.get((method, eps), {}).items():
            results.append({"method": method, "eps": e, "trained_eps": eps, "lam": config["lam"],
                            "mtl_alpha": config["mtl_alpha"], "epoch_time_s": epoch,
                            "wall_time_s": wall_times[(method, eps)], "train_summary":
                                json.loads((out / "summary.json").read_text()),
                            **{name: row(s) for name, s in sets.items()}})
    for r in results:
        r["epoch_time_vs_std"] = r["epoch_time_s"] / std_epoch if std_epoch else None
    config = json.loads((run_dir(args, *runs(args)[-1]) / "config.json").read_text())
    return {"benchmark": "train_cifar", "model": args.model, "epochs": args.epochs, "subset": args.subset,
            "threads": args.threads, "certify_num": args.certify_num, "certify_domains": args.certify_domains,
            "eran_domains": args.eran_domains, "eran_num": args.eran_num, "certify_timeout_s": args.certify_timeout,
            "command": " ".join(sys.argv), "config": config["config"], "versions": config["versions"],
            "results": results}


def markdown(result: dict) -> str:
    eran = [d for d in result["eran_domains"].split(",") if d]
    jpeg = [d for d in result["certify_domains"].split(",") if d] if result["certify_num"] else []
    epochs = result["epochs"] or "the recipe's"
    lines = [f"CIFAR-10, {result['model']}, {epochs} epochs on the first {result['subset'] or 'all'} "
             f"training images (JPEG copy, lossy), {result['threads']} thread(s); MN-BaB timeout "
             f"{result['certify_timeout_s']} s per image. ERAN: the first {result['eran_num']} images of "
             f"cifar10_test.csv (exact); "
             f"JPEG: the first {result['certify_num']} test images of the lossy copy.", "",
             "| eps | method | ERAN natural | ERAN PGD | " + "".join(f"ERAN {d} | " for d in eran)
             + "".join(f"JPEG {d} | " for d in ["natural", "PGD", *jpeg]) + "epoch time (s) | vs std |",
             "|---|---|---|---|" + "---|" * len(eran) + "---|" * (2 + len(jpeg)) + "---|---|"]
    for r in result["results"]:
        cells = [f"{r['eran']['natural']:.0%}", f"{r['eran']['pgd']:.0%}"]
        cells += [f"{r['eran'][f'certified_{d}']:.0%}" for d in eran]
        if "jpeg" in r:
            cells += [f"{r['jpeg']['natural']:.1%}", f"{r['jpeg']['pgd']:.1%}"]
            cells += [f"{r['jpeg'][f'certified_{d}']:.1%}" for d in jpeg]
        else:
            cells += ["-"] * (2 + len(jpeg))
        ratio = f"{r['epoch_time_vs_std']:.1f}x" if r["epoch_time_vs_std"] else "-"
        name = r["method"] + (f" (lambda {r['lam']:g})" if r["method"] == "sabr" else "") + (
            f" (alpha {r['mtl_alpha']:g})" if r["method"] == "mtl-ibp" else "")
        eps = str(Fraction(r["eps"]).limit_denominator(1000)) if "/" not in r["eps"] else r["eps"]
        lines.append(f"| {eps} | {name} | " + " | ".join(cells) + f" | {r['epoch_time_s']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def export_models(args: argparse.Namespace) -> None:
    """Copy every run's model.onnx to --models-dir as cifar10_MODEL_METHOD_EPS.onnx."""
    for method, eps in runs(args):
        name = f"cifar10_{args.model}_{method.replace('-', '')}_{eps_tag(eps)}.onnx"
        shutil.copyfile(run_dir(args, method, eps) / "model.onnx", Path(args.models_dir) / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    wall_times = {}
    for method, eps in runs(args):
        if args.stage != "certify":
            wall_times[(method, eps)] = train(args, method, eps)
        else:
            wall_times[(method, eps)] = float(run_dir(args, method, eps).with_suffix(".wall_time_s").read_text())
    if args.stage == "train":
        return 0
    export_models(args)
    # ERAN's 100 images first: when time is short, the 1000-image runs are the ones to cut
    certified = {run: {} for run in runs(args)}
    for name in ("eran", "jpeg") if args.certify_num else ("eran",):
        for method, eps in runs(args):
            for e, summary in certify_run(args, method, eps, name).items():
                certified[(method, eps)].setdefault(e, {})[name] = summary
    result = collect(args, wall_times, certified)
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (Path(args.out) / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
