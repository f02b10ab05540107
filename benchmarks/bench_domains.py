"""Speed of Box and DeepPoly against a plain forward pass, on the bundled MNIST net and mnist_fc 256x6.

For each network: the first 100 MNIST test images (the bundled copy of
ERAN's mnist_test.csv), L-inf radius eps, robustness rows of the true label
against every other class. Times are medians over ``--repeats`` runs of

- ``forward``: one plain forward pass of the IR (no gradients);
- ``box``: interval propagation with the margin rows folded into the last layer;
- ``deeppoly``: back-substitution for every ReLU layer's bounds and the margin rows;

each both for all 100 images in one batch and image by image (batch 1), and
reported per image and as a ratio to the forward pass of the same batch size.
The certified counts are those of the domain alone (no attack, no MN-BaB).

    python benchmarks/bench_domains.py --benchmarks ../shared/benchmarks   # about 5 minutes

Writes ``benchmarks/results/domains.{json,md}`` (versions, threads and the command included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.cli.certify import demo_files  # noqa: E402
from nncert.domains import box  # noqa: E402
from nncert.domains.deeppoly import DeepPoly  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import adapt_to_images, load_inputs_npz  # noqa: E402
from nncert.verifier.results import command_line, versions  # noqa: E402
from nncert.verifier.spec import linf_ball, robustness_spec  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def problems(net, x: torch.Tensor, y: torch.Tensor, eps: float):
    """Input boxes (N, *in) and margin rows C (N, n_out - 1, n_out) of the correctly classified images."""
    with torch.no_grad():
        keep = net(x).argmax(1) == y
    x, y = x[keep], y[keep]
    n_out = net.output_shape[0]
    C = torch.stack([robustness_spec(int(label), n_out).C for label in y])
    return *linf_ball(x, eps), C, int(keep.sum())


def bench_network(name: str, onnx_path: Path, eps: float, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    model = load_onnx(onnx_path)
    net = adapt_to_images(model.network, model.run, tuple(x.shape[1:])).network
    lower, upper, C, n_correct = problems(net, x, y, eps)
    domains = {
        "forward": lambda lo, hi, c: net((lo + hi) / 2),
        "box": lambda lo, hi, c: box.bound_linear(net, lo, hi, c),
        "deeppoly": lambda lo, hi, c: DeepPoly(net, lo, hi).bound(c),
    }
    out = {"network": name, "onnx": str(onnx_path), "eps": eps, "images": len(x), "correct": n_correct,
           "relus": sum(int(np.prod(net.shapes[r])) for r in net.relu_nodes)}
    with torch.no_grad():
        for domain, fn in domains.items():
            batched = median_time(lambda fn=fn: fn(lower, upper, C), repeats) / n_correct
            single = median_time(lambda fn=fn: [fn(lower[i:i + 1], upper[i:i + 1], C[i:i + 1])
                                                for i in range(n_correct)], max(1, repeats // 3)) / n_correct
            out[domain] = {"per_image_batched_ms": 1e3 * batched, "per_image_single_ms": 1e3 * single}
            if domain != "forward":
                bound = fn(lower, upper, C)
                out[domain]["certified"] = int((bound > 0).all(1).sum())
        for domain in ("box", "deeppoly"):
            for mode in ("batched", "single"):
                out[domain][f"vs_forward_{mode}"] = (out[domain][f"per_image_{mode}_ms"]
                                                     / out["forward"][f"per_image_{mode}_ms"])
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Threads: {meta['threads']}, torch {meta['versions']['torch']}, {meta['versions']['platform']}.",
             f"Command: `{meta['command']}`", "",
             "| network | eps | ReLUs | domain | certified | ms/image (batch of all) | x forward | "
             "ms/image (batch 1) | x forward |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for domain in ("forward", "box", "deeppoly"):
            d = r[domain]
            cert = f"{d['certified']}/{r['images']}" if "certified" in d else f"{r['correct']} correct"
            lines.append(f"| {r['network']} | {r['eps']} | {r['relus']} | {domain} | {cert} | "
                         f"{d['per_image_batched_ms']:.3f} | {d.get('vs_forward_batched', 1.0):.1f} | "
                         f"{d['per_image_single_ms']:.3f} | {d.get('vs_forward_single', 1.0):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default=None,
                   help="folder holding vnncomp/2022_mnist_fc (default: $NNCERT_BENCHMARKS or ../shared/benchmarks)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "domains"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    bench_dir = Path(args.benchmarks or os.environ.get("NNCERT_BENCHMARKS") or REPO.parent / "shared" / "benchmarks")
    demo, samples = demo_files()
    x, y = load_inputs_npz(samples, 0.0, 1.0)
    networks = [("demo cnn3 (SABR)", demo, 0.1), ("demo cnn3 (SABR)", demo, 0.3),
                ("mnist_fc 256x6", bench_dir / "vnncomp" / "2022_mnist_fc" / "onnx" / "mnist-net_256x6.onnx", 0.03)]
    rows = []
    for name, path, eps in networks:
        if not path.exists():
            sys.exit(f"bench_domains: {path} not found (pass --benchmarks)")
        rows.append(bench_network(name, path, eps, x, y, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"command": command_line(), "versions": versions(), "threads": args.threads, "repeats": args.repeats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
