"""MN-BaB on a slice of a VNN-COMP benchmark with a CPU-time limit, checked against reference_results.csv.

    python benchmarks/conv_mnbab.py BENCHMARK_DIR --start 0 --num 10 --cpu-timeout 15 --out rows.csv \
        [--code LABEL=DIR ...]

Each instance runs as ``certify --domain mnbab --threads 1`` does (the
pipeline's clean check and PGD attack, then MN-BaB), except that its time
limit is CPU seconds of the process: on a machine shared by other jobs a
wall-clock limit gives each run whatever the others leave (2 to 3 times less
here), a CPU limit the same work every time. With one thread CPU time is the
wall time of an idle machine. Every ``--code LABEL=DIR`` is a checkout to
import the verifier from (default: this one, labelled ``this``); each instance
runs once per checkout, in a fresh process, one after the other, so that a
before/after comparison is side by side in one run. Rows: benchmark, onnx,
vnnlib, code, cpu_timeout_s, result (unsat/sat/unknown/timeout), reference
(best known), contradiction, cpu_s, and from MN-BaB's statistics root_cpu_s
(DeepPoly and the root's optimisations), root_margin (the worst clause margin
there) and subproblems (bounded by branch-and-bound).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ["benchmark", "onnx", "vnnlib", "code", "cpu_timeout_s", "result", "reference", "contradiction", "cpu_s",
           "root_cpu_s", "root_margin", "subproblems"]


def worker(code: str, onnx: str, vnnlib: str, cpu_timeout: float) -> None:
    """One instance with the verifier of ``code``: prints a JSON object of its result and MN-BaB statistics."""
    sys.path.insert(0, code)
    time.monotonic = time.process_time  # every deadline of the verifier becomes a CPU-time deadline
    import torch

    import nncert.verifier.registry as registry
    from nncert.verifier.api import certify_vnnlib
    from nncert.verifier.onnx_import import load_onnx

    torch.set_num_threads(1)
    stats: list[dict] = []
    verify = registry.verify_mnbab

    def recorded(*args, **kwargs):
        verdicts = verify(*args, **kwargs)
        stats.extend(v.stats for v in verdicts)
        return verdicts

    registry.verify_mnbab = registry.DOMAINS["mnbab"] = recorded
    model = load_onnx(onnx)
    start = time.process_time()
    results = certify_vnnlib(model, vnnlib, ("mnbab",), timeout=cpu_timeout)
    last = stats[-1] if stats else {}
    print(json.dumps({"status": results.rows[0]["status"], "cpu_s": time.process_time() - start,
                      "root_cpu_s": last.get("root_time_s"), "root_margin": last.get("root_margin"),
                      "subproblems": sum(b.get("subproblems", 0) for b in last.get("bab", []))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--num", type=int, default=10)
    parser.add_argument("--cpu-timeout", type=float, default=15.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--code", action="append", default=[],
                        help="LABEL=DIR, a checkout to import the verifier from (repeatable; default: this one)")
    parser.add_argument("--worker", nargs=4, metavar=("CODE", "ONNX", "VNNLIB", "CPU_TIMEOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        code, onnx, vnnlib, cpu_timeout = args.worker
        return worker(code, onnx, vnnlib, float(cpu_timeout))
    codes = [c.split("=", 1) for c in args.code] or [["this", str(Path(__file__).resolve().parent.parent)]]
    bench = Path(args.benchmark)
    rows = list(csv.reader((bench / "instances.csv").read_text().splitlines()))[args.start:args.start + args.num]
    reference_rows = csv.DictReader((bench / "reference_results.csv").read_text().splitlines())
    reference = {(r["onnx"], r["vnnlib"]): r["best_known"] for r in reference_rows}  # a vnnlib may serve several nets
    result_of = {"certified": "unsat", "falsified": "sat", "timeout": "timeout"}
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for onnx, vnnlib, _ in rows:
            for label, code in codes:
                run = subprocess.run([sys.executable, __file__, str(bench), "--out", "-", "--worker", code,
                                      str(bench / onnx), str(bench / vnnlib), str(args.cpu_timeout)],
                                     capture_output=True, text=True)
                if run.returncode:
                    raise RuntimeError(f"{vnnlib} [{label}] failed:\n{run.stderr}")
                got = json.loads(run.stdout.strip().splitlines()[-1])
                result = result_of.get(got["status"], "unknown")
                ref = reference.get((onnx, vnnlib), "unknown")
                wrong = {result, ref} == {"sat", "unsat"}
                margin = "" if got["root_margin"] is None else f"{got['root_margin']:.4f}"
                root = "" if got["root_cpu_s"] is None else f"{got['root_cpu_s']:.1f}"
                out.writerow([bench.name, onnx, vnnlib, label, args.cpu_timeout, result, ref, wrong,
                              f"{got['cpu_s']:.1f}", root, margin, got["subproblems"]])
                f.flush()
                print(f"{vnnlib} [{label}]: {result} (reference {ref}) {got['cpu_s']:.1f} s CPU, root {root} s "
                      f"margin {margin}, {got['subproblems']} subproblems", flush=True)


if __name__ == "__main__":
    main()
