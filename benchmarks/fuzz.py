"""Long fuzzing of the ONNX importer and the VNN-LIB parser: the test suite's hypothesis targets, longer.

The targets, their strategies and their checks are those of
``tests/verifier/test_onnx_fuzz.py`` (mutated real models import and agree
with onnxruntime, or fail with one line) and ``tests/verifier/test_vnnlib.py``
(mutated ACAS Xu property 6 parses to finite boxes and rows, or raises a
one-line SpecError); the test suite runs a few dozen examples, this script
runs rounds of ``--round`` examples with fresh seeds until ``--seconds`` pass
per target. A failing round is reported with hypothesis' shrunk example and
the next round starts.

    NNCERT_BENCHMARKS=../shared/benchmarks python benchmarks/fuzz.py --seconds 600

Writes ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.verifier.results import command_line, versions  # noqa: E402
from tests.verifier import test_onnx_fuzz, test_vnnlib  # noqa: E402


def targets(folder: Path) -> dict[str, tuple[Callable, dict]]:
    """Name -> (check taking the strategies' values, strategies)."""
    return {"onnx_import": (partial(test_onnx_fuzz.check_mutant, folder), test_onnx_fuzz.STRATEGIES),
            "vnnlib": (partial(test_vnnlib.check_mutant, test_vnnlib.seed_file()), test_vnnlib.STRATEGIES)}


def fuzz(check: Callable, strategies: dict, seconds: float, round_size: int, first_seed: int) -> dict:
    """Rounds of ``round_size`` examples (seeds first_seed, first_seed + 1, ...) until ``seconds`` pass."""
    calls, failures, rounds = [0], [], 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        @settings(max_examples=round_size, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @seed(first_seed + rounds)
        @given(**strategies)
        def target(**values):
            calls[0] += 1
            check(**values)

        try:
            target()
        except Exception as e:  # hypothesis re-raises the failure of the shrunk example
            failures.append({"seed": first_seed + rounds,
                             "error": "".join(traceback.format_exception_only(e)).strip()[-2000:]})
        rounds += 1
    return {"rounds": rounds, "examples_per_round": round_size, "calls": calls[0], "failures": failures,
            "time_s": round(time.monotonic() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="time budget per target")
    p.add_argument("--round", type=int, default=500, help="examples per hypothesis run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="onnx_import,vnnlib")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fuzz.json"))
    args = p.parse_args()
    report = {"command": command_line(), "versions": versions(), "targets": {}}
    with tempfile.TemporaryDirectory() as folder:
        available = targets(Path(folder))
        for name in args.targets.split(","):
            check, strategies = available[name]
            report["targets"][name] = fuzz(check, strategies, args.seconds, args.round, args.seed)
            print(name, json.dumps(report["targets"][name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
