"""Where one VNN-LIB property's MN-BaB time goes: CPU seconds per stage and per kernel.

    python benchmarks/profile_mnbab.py NET.onnx PROP.vnnlib [--timeout 30] [--top 12]

Runs ``--domain mnbab`` on one property with one thread under cProfile, timed by
the process's CPU clock (a loaded machine stretches wall time, not CPU time),
and prints two markdown tables: the stages (DeepPoly, alpha, multi-neuron
hulls, their multipliers, attack, intermediate searches, branch-and-bound) and
the functions of largest own time (torch kernels, autograd, qhull, Python).
The deadline is wall-clock, as in ``certify``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nncert.domains.mnbab as mnbab  # noqa: E402
import nncert.verifier.registry as registry  # noqa: E402
from nncert.domains.bab import SplitDeepPoly  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import vnnlib_instance  # noqa: E402
from nncert.verifier.spec import PropertyBatch  # noqa: E402
from nncert.verifier.vnnlib import parse_vnnlib  # noqa: E402


class StageClock:
    """CPU seconds spent in wrapped functions, by stage name (nested stages count in their own line only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []

    def wrap(self, fn, name):
        def timed(*args, **kwargs):
            stage = name(args, kwargs) if callable(name) else name
            start = time.process_time()
            self.stack.append(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                spent = time.process_time() - start
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
                if self.stack:  # charged to the inner stage, not the outer one
                    self.seconds[self.stack[-1]] = self.seconds.get(self.stack[-1], 0.0) - spent
        return timed


def optimize_stage(args, kwargs) -> str:
    return "gamma and final multipliers" if args[0].gamma else "alpha (slopes)"


def instrument(clock: StageClock) -> None:
    mnbab.multineuron_constraints = clock.wrap(mnbab.multineuron_constraints, "multi-neuron hulls")
    mnbab.tighten = clock.wrap(mnbab.tighten, "intermediate searches")
    mnbab._bab_clause = clock.wrap(mnbab._bab_clause, "branch-and-bound")
    SplitDeepPoly.optimize = clock.wrap(SplitDeepPoly.optimize, optimize_stage)
    registry.pgd_attack = clock.wrap(registry.pgd_attack, "attack (50 restarts)")
    mnbab.root_bounds = clock.wrap(mnbab.root_bounds, "DeepPoly and the rest of the root")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("vnnlib")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = load_onnx(args.onnx).network
    instance = vnnlib_instance(parse_vnnlib(args.vnnlib, n_inputs=None, n_outputs=None), net.input_shape,
                               net.output_shape[0])
    batch = PropertyBatch.stack(instance.props)
    clock = StageClock()
    instrument(clock)
    profile = cProfile.Profile(time.process_time)
    start_cpu, start = time.process_time(), time.monotonic()
    profile.enable()
    with torch.no_grad():
        verdicts = [registry.verify_mnbab(net, batch[[i]], time.monotonic() + args.timeout,
                                             registry.Options())[0]
                    for i in range(len(batch))]
    profile.disable()
    total_cpu, wall = time.process_time() - start_cpu, time.monotonic() - start
    print(f"{args.onnx} {args.vnnlib}: {[v.status for v in verdicts]}, {total_cpu:.1f} s CPU, {wall:.1f} s wall")
    print("\n| stage | CPU s | share |\n|---|---:|---:|")
    for stage, seconds in sorted(clock.seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {seconds:.2f} | {seconds / total_cpu:.0%} |")
    print("\n| function (own time) | CPU s | share |\n|---|---:|---:|")
    stats = pstats.Stats(profile).stats
    for (file, line, fn), (_, calls, own, _, _) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:args.top]:
        where = fn if file == "~" else f"{file.rsplit('/', 1)[-1]}:{line} {fn}"
        print(f"| {where} ({calls} calls) | {own:.2f} | {own / total_cpu:.0%} |")
    for verdict in verdicts:
        print({k: v for k, v in verdict.stats.items() if k != "bab"}, verdict.stats.get("bab"))


if __name__ == "__main__":
    main()
