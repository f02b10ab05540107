"""What the float64 guard of float32 verdicts costs, and which verdicts it changes.

Runs the same properties side by side in one process, in three modes:

- ``float32``: float32 bounds taken at face value (``certify --trust-float32``);
- ``guarded``: float32 with the float64 guard (the default of ``certify``);
- ``float64``: everything in float64 (``certify --float64``).

on the bundled demo (first ``--demo-num`` MNIST images at eps 0.1, Box, DeepPoly
and MN-BaB) and, with MN-BaB, on ``--instances`` rows spread evenly over each
shared VNN-COMP benchmark (2022_mnist_fc, acasxu, 2022_oval21,
2022_sri_resnet_b), each with its own short timeout (``--timeouts``). Reports
per mode the counts and total time with the ratio to ``float32``, every verdict
that differs between the modes, and every verdict that contradicts the
benchmark's reference (``best_known`` of reference_results.csv).

    python benchmarks/float_soundness.py --benchmarks ../shared/benchmarks --threads 1   # about 40 minutes

Writes ``benchmarks/results/float_soundness.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.cli.certify import demo_files  # noqa: E402
from nncert.domains.mnbab import MNBaBConfig, root_bounds  # noqa: E402
from nncert.verifier.certify import Pipeline  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import adapt_to_images, linf_instances, load_inputs_npz, vnnlib_instance  # noqa: E402
from nncert.verifier.results import command_line, versions  # noqa: E402
from nncert.verifier.vnnlib import parse_vnnlib  # noqa: E402

MODES = ("float32", "guarded", "float64")
UNSAT_SAT = {"certified": "unsat", "falsified": "sat"}


def pipeline(model, domains: list[str], mode: str, timeout: float) -> Pipeline:
    """The pipeline ``certify`` builds for ``mode`` (see cli.certify.make_pipeline)."""
    torch.manual_seed(0)
    exact = copy.deepcopy(model.network).to(dtype=torch.float64)
    net = exact if mode == "float64" else copy.deepcopy(exact).to(dtype=torch.float32)
    return Pipeline(net, domains, model.oracle, timeout=timeout, exact=exact, recheck=mode == "guarded")


def run(model, instances, domains: list[str], mode: str, timeout: float) -> list[dict]:
    rows = []
    for batch in pipeline(model, domains, mode, timeout).run(instances):
        rows += [{"index": r.index, "domain": r.domain, "status": r.status, "time_s": r.time_s} for r in batch]
    return rows


def demo_case(num: int, timeout: float) -> list[dict]:
    model_path, samples = demo_files()
    onnx_model = load_onnx(model_path)
    x, y = load_inputs_npz(samples, 0.0, 1.0)
    model = adapt_to_images(onnx_model.network, onnx_model.run, tuple(x.shape[1:]))
    instances = linf_instances(x[:num], y[:num], 0.1, onnx_model.output_size)
    out = []
    for mode in MODES:
        for row in run(model, instances, ["box", "deeppoly", "mnbab"], mode, timeout):
            out.append({"benchmark": "demo", "instance": f"image {row['index']}", "mode": mode, **row})
    return out


# the shared benchmarks, each with its default timeout (s): enough for MN-BaB's root stages in float32 on a loaded
# 2-core machine (sri_resnet_b's root alone takes 30-45 s in float32 there)
BENCHMARKS = {"2022_mnist_fc": 10.0, "acasxu": 10.0, "2022_oval21": 20.0, "2022_sri_resnet_b": 60.0}


def spread(n_rows: int, k: int) -> list[int]:
    """k row indices spread evenly over 0..n_rows-1 (all rows if k >= n_rows)."""
    return sorted({round(i * (n_rows - 1) / max(k - 1, 1)) for i in range(min(k, n_rows))})


def vnncomp_case(folder: Path, name: str, k: int, timeout: float) -> list[dict]:
    table = [r for r in csv.reader((folder / "instances.csv").read_text().splitlines()) if r]
    rows = spread(len(table), k)
    reference = {(r["onnx"], r["vnnlib"]): r["best_known"]
                 for r in csv.DictReader((folder / "reference_results.csv").read_text().splitlines())}
    out = []
    for i in rows:
        onnx_rel, vnnlib_rel, _ = table[i]
        onnx_model = load_onnx(folder / onnx_rel)
        props = parse_vnnlib(folder / vnnlib_rel, n_inputs=None, n_outputs=None)
        instance = vnnlib_instance(props, onnx_model.input_shape, onnx_model.output_size)
        model = adapt_to_images(onnx_model.network, onnx_model.run, onnx_model.input_shape)
        for mode in MODES:
            for row in run(model, [instance], ["mnbab"], mode, timeout):
                out.append({"benchmark": name, "instance": f"{Path(onnx_rel).stem} {Path(vnnlib_rel).stem}",
                            "mode": mode, "reference": reference.get((onnx_rel, vnnlib_rel)), **row})
    return out


def root_cost(vnncomp: Path, names: list[str], repeats: int) -> list[dict]:
    """Seconds of MN-BaB's root stages (DeepPoly, 5 alpha steps) in float32 and float64 on each benchmark's first
    instance, the two precisions alternating: what MN-BaB's float64 run under the guard costs per bound."""
    out = []
    for name in names:
        onnx_rel, vnnlib_rel, _ = next(csv.reader((vnncomp / name / "instances.csv").read_text().splitlines()))
        onnx_model = load_onnx(vnncomp / name / onnx_rel)
        props = parse_vnnlib(vnncomp / name / vnnlib_rel, n_inputs=None, n_outputs=None)
        prop = vnnlib_instance(props, onnx_model.input_shape, onnx_model.output_size).props[0]
        config = MNBaBConfig(alpha_iterations=5, multineuron=False)
        for _ in range(repeats):
            for dtype in (torch.float32, torch.float64):
                net = copy.deepcopy(onnx_model.network).to(dtype=dtype)
                start = time.perf_counter()
                root_bounds(net, prop.lower.to(dtype), prop.upper.to(dtype), prop.output.C.to(dtype).unsqueeze(0),
                            config)
                out.append({"benchmark": name, "dtype": str(dtype).removeprefix("torch."),
                            "time_s": time.perf_counter() - start})
    return out


def root_markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# MN-BaB's root stages in float32 and float64", "", f"`{meta['command']}` ({meta['threads']} thread(s)); "
             f"{meta['date']}, commit {meta['versions']['nncert_commit']}, {meta['hardware']}", "",
             "benchmark | float32 s (median) | float64 s (median) | float64 / float32", "---|---|---|---"]
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        t = {d: statistics.median(r["time_s"] for r in rows if r["benchmark"] == name and r["dtype"] == d)
             for d in ("float32", "float64")}
        lines.append(f"{name} | {t['float32']:.2f} | {t['float64']:.2f} | {t['float64'] / t['float32']:.2f}")
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> dict:
    key = ("benchmark", "instance", "domain")
    by_mode = {mode: {tuple(r[k] for k in key): r for r in rows if r["mode"] == mode} for mode in MODES}
    base = by_mode["float32"]
    total = {mode: sum(r["time_s"] for r in by_mode[mode].values()) for mode in MODES}
    changes = [{"benchmark": k[0], "instance": k[1], "domain": k[2], "mode": mode,
                "float32": base[k]["status"], "status": r["status"]}
               for mode in MODES[1:] for k, r in by_mode[mode].items() if r["status"] != base[k]["status"]]
    wrong = [{**{c: r[c] for c in (*key, "mode", "status", "reference")}} for r in rows
             if r.get("reference") in ("sat", "unsat") and UNSAT_SAT.get(r["status"], r["reference"]) != r["reference"]]
    counts = {mode: {s: sum(r["status"] == s for r in by_mode[mode].values())
                     for s in ("certified", "falsified", "unknown", "timeout", "misclassified")} for mode in MODES}
    per_benchmark = {b: {mode: {"time_s": sum(r["time_s"] for r in by_mode[mode].values() if r["benchmark"] == b),
                               **{s: sum(r["status"] == s for r in by_mode[mode].values() if r["benchmark"] == b)
                                  for s in ("certified", "falsified", "unknown", "timeout")}} for mode in MODES}
                     for b in dict.fromkeys(r["benchmark"] for r in rows)}
    return {"total_time_s": total, "time_ratio_to_float32": {m: total[m] / total["float32"] for m in MODES},
            "counts": counts, "per_benchmark": per_benchmark, "changed_verdicts": changes,
            "contradicting_reference": wrong}


def markdown(summary: dict, meta: dict, rows: list[dict]) -> str:
    v = meta["versions"]
    lines = ["# Float32 verdicts guarded by float64", "", f"`{meta['command']}` ({meta['threads']} thread(s), demo "
             f"timeout {meta['timeout_s']} s per property, VNN-COMP timeouts {meta['vnncomp_timeouts_s']} s, "
             f"{meta['instances']} rows per benchmark, seed {meta['seed']}); {meta['date']}, commit "
             f"{v['nncert_commit']}, torch {v['torch']}, {meta['hardware']}, wall {meta['wall_s']:.0f} s", "",
             "mode | certified | falsified | unknown | timeout | total s | time / float32",
             "---|---|---|---|---|---|---"]
    for mode in MODES:
        c = summary["counts"][mode]
        lines.append(f"{mode} | {c['certified']} | {c['falsified']} | {c['unknown']} | {c['timeout']} | "
                     f"{summary['total_time_s'][mode]:.1f} | {summary['time_ratio_to_float32'][mode]:.2f}")
    lines += ["", "benchmark | mode | certified | falsified | unknown | timeout | total s",
              "---|---|---|---|---|---|---"]
    lines += [f"{b} | {mode} | {c['certified']} | {c['falsified']} | {c['unknown']} | {c['timeout']} | "
              f"{c['time_s']:.1f}" for b, modes in summary["per_benchmark"].items() for mode, c in modes.items()]
    instances = {}
    for r in rows:
        if r["benchmark"] != "demo":
            instances.setdefault((r["benchmark"], r["instance"]), {"reference": r["reference"]})[r["mode"]] = r
    lines += ["", "VNN-COMP instance | reference | " + " | ".join(MODES), "---|---|" + "|".join("---" for _ in MODES)]
    lines += [f"{b} {i} | {m['reference']} | " + " | ".join(f"{m[mode]['status']} {m[mode]['time_s']:.1f} s"
                                                             for mode in MODES) for (b, i), m in instances.items()]
    lines += ["", f"Verdicts that differ from float32 ({len(summary['changed_verdicts'])}):", ""]
    lines += [f"- {c['benchmark']} {c['instance']} {c['domain']}: {c['float32']} -> {c['status']} ({c['mode']})"
              for c in summary["changed_verdicts"]] or ["- none"]
    lines += ["", f"Verdicts contradicting the reference ({len(summary['contradicting_reference'])}):", ""]
    lines += [f"- {w['benchmark']} {w['instance']} {w['mode']}: {w['status']}, reference {w['reference']}"
              for w in summary["contradicting_reference"]] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", type=Path, default=REPO.parent / "shared" / "benchmarks")
    p.add_argument("--timeout", type=float, default=20.0, help="per property of the demo")
    p.add_argument("--demo-num", type=int, default=30, help="0: no demo")
    p.add_argument("--instances", type=int, default=4, help="rows per VNN-COMP benchmark, spread over its list")
    p.add_argument("--timeouts", default=",".join(f"{b}={t:g}" for b, t in BENCHMARKS.items()),
                   help="benchmark=seconds per VNN-COMP benchmark (the benchmarks run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "float_soundness")
    p.add_argument("--root-cost", type=int, default=0,
                   help="instead: time MN-BaB's root stages in float32 and float64, this many times each")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    vnncomp = args.benchmarks / "vnncomp"
    timeouts = {b: float(t) for b, t in (item.split("=") for item in args.timeouts.split(",") if item)}
    meta = {"command": command_line(), "versions": versions(), "threads": args.threads, "seed": 0,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "hardware": f"{os.cpu_count()}-core CPU, shared with other jobs"}
    if args.root_cost:
        rows = root_cost(vnncomp, list(timeouts), args.root_cost)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(root_markdown(rows, meta))
        print(root_markdown(rows, meta))
        return
    rows = demo_case(args.demo_num, args.timeout) if args.demo_num > 0 else []
    for name, timeout in timeouts.items():
        rows += vnncomp_case(vnncomp / name, name, args.instances, timeout)
    meta |= {"timeout_s": args.timeout, "vnncomp_timeouts_s": timeouts, "instances": args.instances,
             "wall_s": time.perf_counter() - start}
    summary = summarize(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(summary, meta, rows))
    print(markdown(summary, meta, rows))


if __name__ == "__main__":
    main()
