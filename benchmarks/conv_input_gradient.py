"""Benchmark: a convolution's input gradient, torch's transposed convolution against the sub-pixel form.

For every convolution of cnn3 (MNIST and CIFAR-10), cnn5 and cnn7 (CIFAR-10) at the training batch size:
the time of the forward convolution, of conv_transpose2d (what autograd runs for the input gradient) and of
training/subpixel.py's stride-1 convolution + pixel shuffle, interleaved, best of --repeats. Shows where
the sub-pixel form pays (strided layers with few input channels), which training/subpixel.py's rule
follows.

    python benchmarks/conv_input_gradient.py --threads 1

writes benchmarks/results/conv_input_gradient.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nncert.training.models import CONVNETS  # noqa: E402
from nncert.training.subpixel import MAX_IN_CHANNELS, conv_transpose_subpixel  # noqa: E402
from nncert.verifier.results import versions  # noqa: E402

# (model, dataset, batch size of the recipe, input channels, input side)
SETTINGS = [("cnn3", "mnist", 256, 1, 28), ("cnn3", "cifar10", 128, 3, 32), ("cnn5", "cifar10", 128, 3, 32),
            ("cnn7", "cifar10", 128, 3, 32)]


def layers() -> list[dict]:
    """Every convolution of SETTINGS: model, dataset, batch, c_in, side, c_out, kernel, stride, padding."""
    out = []
    for model, dataset, batch, channels, side in SETTINGS:
        for c_out, kernel, stride, padding in CONVNETS[model].convs:
            out.append({"model": model, "dataset": dataset, "batch": batch, "c_in": channels, "side": side,
                        "c_out": c_out, "kernel": kernel, "stride": stride, "padding": padding})
            channels, side = c_out, (side + 2 * padding - kernel) // stride + 1
    return out


def best_times(fns: dict, repeats: int) -> dict[str, float]:
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) * 1000 for name, t in times.items()}


def measure(layer: dict, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n, c_in, side, k, s, p = (layer[key] for key in ("batch", "c_in", "side", "kernel", "stride", "padding"))
    x = torch.rand(n, c_in, side, side, generator=g)
    weight = torch.randn(layer["c_out"], c_in, k, k, generator=g)
    out = F.conv2d(x, weight, None, s, p)
    grad = torch.randn(out.shape, generator=g)
    output_padding = side - ((out.shape[-1] - 1) * s - 2 * p + k)
    ms = best_times({"forward": lambda: F.conv2d(x, weight, None, s, p),
                     "conv_transpose2d": lambda: F.conv_transpose2d(grad, weight, None, s, p, output_padding),
                     "subpixel": lambda: conv_transpose_subpixel(grad, weight, s, (p, p), (side, side))}, repeats)
    return {**layer, **{f"{name}_ms": t for name, t in ms.items()},
            "subpixel_path": s > 1 and c_in <= MAX_IN_CHANNELS}


def markdown(result: dict) -> str:
    lines = [f"Input gradient of each convolution (best of {result['repeats']}, {result['threads']} thread(s)), ms",
             "", "| model (dataset, batch) | layer | forward | conv_transpose2d | sub-pixel | sub-pixel path |",
             "|---|---|---|---|---|---|"]
    for r in result["layers"]:
        layer = f"{r['c_in']}->{r['c_out']}, {r['kernel']}x{r['kernel']}, stride {r['stride']}, {r['side']}px"
        lines.append(f"| {r['model']} ({r['dataset']}, {r['batch']}) | {layer} | {r['forward_ms']:.1f} | "
                     f"{r['conv_transpose2d_ms']:.1f} | {r['subpixel_ms']:.1f} | "
                     f"{'yes' if r['subpixel_path'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "conv_input_gradient"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"benchmark": "conv_input_gradient", "command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "repeats": args.repeats, "threads": args.threads, "versions": versions(),
              "layers": [measure(layer, args.repeats) for layer in layers()]}
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
