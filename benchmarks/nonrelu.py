"""Benchmark: certify small MNIST networks with Sigmoid, Tanh, LeakyReLU and MaxPool in every domain.

Trains six small networks quickly on MNIST (plain training, Adam, ``--epochs``
epochs, one thread: about a minute each on a CPU), exports each to ONNX and
certifies the first ``--num`` test images at L-inf radius ``--eps`` with
``certify --domain box,deeppoly,mnbab`` (per-image ``--timeout``; the shared
PGD attack first, as always):

- ``mlp_sigmoid``: 784-100-100-10 with Sigmoid;
- ``mlp_tanh``: the same with Tanh;
- ``mlp_sigmoid_32``, ``mlp_tanh_32``: 784-32-32-10 with Sigmoid, with Tanh
  (fewer neurons to split);
- ``mlp_leakyrelu``: 784-100-100-10 with LeakyReLU(0.1);
- ``cnn_maxpool``: Conv(8, 4x4, stride 2) - ReLU - MaxPool(2) - 64 - ReLU - 10.

On the Sigmoid and Tanh networks MN-BaB runs a second time without splitting
their neurons (``BaBConfig(split_activations=False)``, through the Python
API with the same domains and otherwise the CLI's defaults): domain
``mnbab-nosplit``, where branch-and-bound has nothing to split and every
clause the root leaves open ends unknown.

    python benchmarks/nonrelu.py --data-dir ../shared/data --threads 1

Writes ``benchmarks/results/nonrelu.{json,md}`` (certified counts and times per
network and domain, versions and the command); the networks go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from nncert.cli.certify import main as certify  # noqa: E402
from nncert.domains.bab import BaBConfig  # noqa: E402
from nncert.domains.from_torch import Normalize  # noqa: E402
from nncert.domains.mnbab import MNBaBConfig  # noqa: E402
from nncert.training.datasets import MEAN, STD, load_dataset  # noqa: E402
from nncert.verifier.api import certify as certify_api  # noqa: E402
from nncert.verifier.registry import Options  # noqa: E402
from nncert.verifier.results import command_line, versions  # noqa: E402

DOMAINS = ("box", "deeppoly", "mnbab")
NO_SPLIT = "mnbab-nosplit"  # MN-BaB without splitting Sigmoid / Tanh neurons
SPLIT_ABLATION = ("mlp_sigmoid", "mlp_tanh", "mlp_sigmoid_32", "mlp_tanh_32")


def mlp(activation: type[nn.Module] | nn.Module, width: int = 100) -> nn.Sequential:
    make = activation if isinstance(activation, type) else (lambda: activation)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), make(), nn.Linear(width, width), make(),
                         nn.Linear(width, 10))


NETWORKS = {
    "mlp_sigmoid": lambda: mlp(nn.Sigmoid),
    "mlp_tanh": lambda: mlp(nn.Tanh),
    "mlp_sigmoid_32": lambda: mlp(nn.Sigmoid, 32),
    "mlp_tanh_32": lambda: mlp(nn.Tanh, 32),
    "mlp_leakyrelu": lambda: mlp(nn.LeakyReLU(0.1)),
    "cnn_maxpool": lambda: nn.Sequential(nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                         nn.Flatten(), nn.Linear(8 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10)),
}


def train(name: str, data, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """Network ``name`` initialised from ``seed`` and trained plainly with Adam (lr 1e-3, batch 128) on the
    normalised images; returns the model with the normalisation in front and the training time."""
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize(MEAN["mnist"], STD["mnist"]), NETWORKS[name]())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(data)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            optimizer.step()
    return model.eval(), time.perf_counter() - start


def export(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--work", default="runs/nonrelu")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--num", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nonrelu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_data = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir).subset(0, args.num)
    np.savez(work / "inputs.npz", x=test.x.numpy(), y=test.y.numpy())
    rows = []
    for name in args.networks.split(","):
        model, train_s = train(name, train_data, args.epochs, args.seed)
        export(model, work / f"{name}.onnx")
        out = work / f"{name}.json"
        code = certify([str(work / f"{name}.onnx"), "--inputs", str(work / "inputs.npz"), "--eps", str(args.eps),
                        "--domain", ",".join(DOMAINS), "--timeout", str(args.timeout), "--threads",
                        str(args.threads), "--json", str(out), "--quiet"])
        if code != 0:
            raise SystemExit(f"certify failed on {name} (exit {code})")
        summary = json.loads(out.read_text())["summary"]
        domains = list(DOMAINS)
        if name in SPLIT_ABLATION:
            options = Options(mnbab=MNBaBConfig(bab_config=BaBConfig(split_activations=False)))
            results = certify_api(str(work / f"{name}.onnx"), test.x, test.y, args.eps, DOMAINS,
                                  timeout=args.timeout, options=options, json_path=work / f"{name}_nosplit.json")
            summary[NO_SPLIT] = results.summary["mnbab"]
            domains.append(NO_SPLIT)
        for domain in domains:
            rows.append({"network": name, "train_s": round(train_s, 1), "domain": domain, **summary[domain]})
        print(name, {d: summary[d]["certified"] for d in domains}, flush=True)
    meta = {"command": command_line(), "versions": versions(), "eps": args.eps, "num": args.num,
            "timeout_s": args.timeout, "epochs": args.epochs, "threads": args.threads, "seed": args.seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(meta, rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Non-ReLU networks: MNIST, first {meta['num']} test images, eps {meta['eps']}, "
             f"timeout {meta['timeout_s']} s, {meta['threads']} thread(s)", "",
             f"`{meta['command']}`", "",
             "| network | train s | domain | natural | certified | falsified | unknown | timeout | mean s | total s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['train_s']} | {r['domain']} | {r['natural']}/{r['n']} | "
                     f"{r['certified']} | {r['falsified']} | {r['unknown']} | {r['timeout']} | "
                     f"{r['mean_time_s']:.3f} | {r['total_time_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
