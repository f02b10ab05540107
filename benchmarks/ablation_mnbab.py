"""Ablation of MN-BaB's stages on one network: DeepPoly, +alpha, +multi-neuron, +intermediate searches, +BaB.

The same samples (first --num bundled MNIST test images, L-inf eps) go through
the certify pipeline (clean check and PGD attack shared) with:

- ``deeppoly``: DeepPoly alone;
- ``alpha``: optimised ReLU slopes, no multi-neuron constraints, no BaB;
- ``alpha+mn``: alpha plus multi-neuron constraints (k = 3), no BaB;
- ``alpha+mn+ib``: and the intermediate bounds tightened by their own small searches, no BaB;
- ``alpha+bab``: alpha and branch-and-bound, without multi-neuron constraints or the intermediate bounds'
  searches (alpha-beta-CROWN-like);
- ``mnbab (acs)``: everything, MN-BaB's active-constraint-score branching;
- ``mnbab (babsr)``: everything, BaBSR branching;
- ``mnbab (babsr top-1)``: the same without filtered smart branching (the best-scored neuron is split);
- ``mnbab (no ib)``: everything but the intermediate bounds' searches (BaBSR branching).

    python benchmarks/ablation_mnbab.py --model ../shared/benchmarks/vnncomp/2022_mnist_fc/onnx/mnist-net_256x4.onnx

Writes ``benchmarks/results/ablation_mnbab.{json,md}`` with the command and versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.cli.certify import demo_files  # noqa: E402
from nncert.domains.bab import BaBConfig  # noqa: E402
from nncert.domains.mnbab import MNBaBConfig  # noqa: E402
from nncert.verifier.certify import Pipeline  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import adapt_to_images, linf_instances, load_inputs_npz  # noqa: E402
from nncert.verifier.registry import Options  # noqa: E402
from nncert.verifier.results import command_line, summarize, versions  # noqa: E402

VARIANTS = {
    "deeppoly": ("deeppoly", MNBaBConfig()),
    "alpha": ("mnbab", MNBaBConfig(multineuron=False, intermediate_bab_share=0.0, bab=False)),
    "alpha+mn": ("mnbab", MNBaBConfig(multineuron=True, intermediate_bab_share=0.0, bab=False)),
    "alpha+mn+ib": ("mnbab", MNBaBConfig(multineuron=True, bab=False)),
    "alpha+bab": ("mnbab", MNBaBConfig(multineuron=False, intermediate_bab_share=0.0, bab=True)),
    "mnbab (acs)": ("mnbab", MNBaBConfig(bab_config=BaBConfig(branching="acs"))),
    "mnbab (babsr)": ("mnbab", MNBaBConfig(bab_config=BaBConfig(branching="babsr"))),
    "mnbab (babsr top-1)": ("mnbab", MNBaBConfig(bab_config=BaBConfig(branching="babsr", fsb_candidates=1))),
    "mnbab (no ib)": ("mnbab", MNBaBConfig(intermediate_bab_share=0.0)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ONNX model taking MNIST images")
    p.add_argument("--eps", type=float, default=0.03)
    p.add_argument("--num", type=int, default=30)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names among: " + ", ".join(VARIANTS))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation_mnbab"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose among: {', '.join(VARIANTS)}")

    x, y = load_inputs_npz(demo_files()[1], 0.0, 1.0)
    x, y = x[:args.num], y[:args.num]
    onnx_model = load_onnx(args.model)
    model = adapt_to_images(onnx_model.network, onnx_model.run, tuple(x.shape[1:]))
    meta = {"command": command_line(), "versions": versions(), "model": args.model,
            "model_sha256": onnx_model.sha256, "eps": args.eps, "num": args.num, "timeout_s": args.timeout,
            "threads": args.threads}
    rows = {}
    for name in names:
        domain, config = VARIANTS[name]
        pipeline = Pipeline(model.network, [domain], model.oracle, timeout=args.timeout,
                            options=Options(mnbab=config))
        instances = linf_instances(x, y, args.eps, onnx_model.output_size)
        start = time.perf_counter()
        results = [row.to_json() for rows_ in pipeline.run(instances) for row in rows_]
        summary = summarize(results, [domain])[domain]
        rows[name] = {**summary, "wall_time_s": time.perf_counter() - start, "config": dataclasses.asdict(config),
                      "statuses": [r["status"] for r in results]}
        print(name, {k: summary[k] for k in ("certified", "falsified", "unknown", "timeout", "mean_time_s")},
              flush=True)
        write(Path(args.out), meta, rows)  # after every variant: a stopped run keeps what it computed


def write(out: Path, meta: dict, rows: dict) -> None:
    """The variants done so far as ``out``.json (everything) and ``out``.md (the table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "variants": rows}, indent=1))
    lines = [f"{Path(meta['model']).name}, eps {meta['eps']}, first {meta['num']} MNIST test images, "
             f"timeout {meta['timeout_s']} s, {meta['threads']} thread(s), torch {meta['versions']['torch']}.",
             f"Command: `{meta['command']}`", "",
             "| variant | certified | falsified | unknown | timeout | mean s | total s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['certified']} | {r['falsified']} | {r['unknown']} | {r['timeout']} | "
                     f"{r['mean_time_s']:.2f} | {r['total_time_s']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
