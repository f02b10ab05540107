"""MN-BaB on a slice of a VNN-COMP benchmark with a CPU-time limit, checked against reference_results.csv.

    python benchmarks/conv_mnbab.py BENCHMARK_DIR --start 0 --num 10 --cpu-timeout 15 --out rows.csv [--code DIR]

Each instance runs as ``certify --domain mnbab --threads 1`` does (the
pipeline's clean check and PGD attack, then MN-BaB), except that its time
limit is CPU seconds of this process: on a machine shared by other jobs a
wall-clock limit gives each run whatever the others leave (2 to 3 times less
here), a CPU limit the same work every time. With one thread CPU time is the
wall time of an idle machine. ``--code DIR`` imports the verifier from
another checkout (e.g. a commit before a change, for a side-by-side run).
Rows: onnx, vnnlib, result (unsat/sat/unknown/timeout), reference (best known), contradiction, cpu_s.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--num", type=int, default=10)
    parser.add_argument("--cpu-timeout", type=float, default=15.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    time.monotonic = time.process_time  # every deadline of the verifier becomes a CPU-time deadline
    import torch

    from nncert.verifier.api import certify_vnnlib
    from nncert.verifier.onnx_import import load_onnx

    torch.set_num_threads(1)
    bench = Path(args.benchmark)
    rows = list(csv.reader((bench / "instances.csv").read_text().splitlines()))[args.start:args.start + args.num]
    reference_rows = csv.DictReader((bench / "reference_results.csv").read_text().splitlines())
    reference = {r["vnnlib"]: r["best_known"] for r in reference_rows}
    result_of = {"certified": "unsat", "falsified": "sat", "timeout": "timeout"}
    models = {}
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["onnx", "vnnlib", "result", "reference", "contradiction", "cpu_s"])
        for onnx, vnnlib, _ in rows:
            if onnx not in models:
                models[onnx] = load_onnx(bench / onnx)
            start = time.process_time()
            results = certify_vnnlib(models[onnx], bench / vnnlib, ("mnbab",), timeout=args.cpu_timeout)
            cpu = time.process_time() - start
            result = result_of.get(results.rows[0]["status"], "unknown")
            ref = reference.get(vnnlib, "unknown")
            wrong = {result, ref} == {"sat", "unsat"}
            out.writerow([onnx, vnnlib, result, ref, wrong, f"{cpu:.1f}"])
            f.flush()
            print(f"{vnnlib}: {result} (reference {ref}) {cpu:.1f} s CPU", flush=True)


if __name__ == "__main__":
    main()
