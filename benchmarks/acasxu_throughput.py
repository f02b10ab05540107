"""Input-splitting branch-and-bound on ACAS Xu: this tree against an older git revision, side by side.

For each property, both codes run ``InputBranchAndBound`` (the search alone, no root stages) with
their default configuration for at most ``--seconds`` on one thread, in alternating rounds (old, new,
old, new, ...) so that the machine's load hits both alike. The older revision runs from a temporary
``git worktree``. Reported per property and code: the verdict, sub-boxes bounded, seconds, sub-boxes
per second, and the ratios new / old. The searches bound different sub-boxes (the branching differs), so
both codes also bound the same ones: the ``--grid`` ^ 5 equal sub-boxes of the property's box, in batches
of 512, without parents (``bound`` alone: no search, no inherited bounds).

    python benchmarks/acasxu_throughput.py --rev 86ec1af --seconds 20 --rounds 2 --grid 4 \\
        --out benchmarks/results/acasxu_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROPERTIES = ["4_7:prop_1", "2_5:prop_1", "1_9:prop_2", "1_1:prop_5"]

# Runs inside the code under test (its own imports): prints one JSON line.
PROBE = """
import json, sys, time
import torch
torch.set_num_threads(1)
from nncert.domains.input_bab import InputBaBConfig, InputBranchAndBound
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.problems import vnnlib_instance
from nncert.verifier.spec import PropertyBatch
from nncert.verifier.vnnlib import parse_vnnlib

folder, net_name, prop, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
model = load_onnx(f"{folder}/onnx/ACASXU_run2a_{net_name}_batch_2000.onnx")
props = parse_vnnlib(f"{folder}/vnnlib/{prop}.vnnlib", n_inputs=None, n_outputs=None)
batch = PropertyBatch.stack(vnnlib_instance(props, model.input_shape, model.output_size).props)
net = model.network
boxes, spent, status = 0, 0.0, "certified"
for i in range(len(batch)):  # one input box per disjunct of the VNN-LIB file
    spec = batch[[i]]
    started = time.monotonic()
    search = InputBranchAndBound(net, spec.lower, spec.upper, spec.C, spec.d, spec.clause, InputBaBConfig(),
                                 lambda x, spec=spec: spec.property_margin(net(x)) <= 0, started + seconds - spent)
    with torch.no_grad():
        result = search.run()
    spent += time.monotonic() - started
    boxes += result.stats["boxes"]
    if result.status != "certified":
        status = result.status
        break
print(json.dumps({"status": status, "boxes": boxes, "seconds": spent}))
"""

# The same sub-boxes for both codes: a grid over the first input box, bounded batch by batch.
GRID = PROBE.split("boxes, spent")[0] + """
from nncert.domains.input_bab import Boxes
grid = int(sys.argv[5])
spec = batch[[0]]
steps = [torch.linspace(0, 1, grid + 1)] * spec.lower[0].numel()
corners = torch.cartesian_prod(*[s[:-1] for s in steps]), torch.cartesian_prod(*[s[1:] for s in steps])
width = spec.upper - spec.lower
lo, hi = (spec.lower + width * c.view(-1, *spec.lower.shape[1:]) for c in corners)
hi = torch.where(corners[1].view_as(hi) == 1, spec.upper.expand_as(hi), hi)
search = InputBranchAndBound(net, spec.lower, spec.upper, spec.C, spec.d, spec.clause, InputBaBConfig(),
                             lambda x: spec.property_margin(net(x)) <= 0, float("inf"))
started = time.monotonic()
with torch.no_grad():
    for part in torch.arange(len(lo)).split(512):
        n = len(part)
        search.bound(Boxes(lo[part], hi[part], spec.d.new_full((n, spec.d.shape[1]), -float("inf")),
                           torch.zeros(n, dtype=torch.long), spec.d.new_zeros(n)))
print(json.dumps({"status": "bounded", "boxes": len(lo), "seconds": time.monotonic() - started}))
"""


def run_probe(tree: Path, folder: Path, prop: str, seconds: float, grid: int = 0) -> dict:
    net_name, name = prop.split(":")
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    code, extra = (GRID, [str(grid)]) if grid else (PROBE, [])
    if not (tree / "nncert").is_dir():  # a revision from before the nncert namespace
        code = code.replace("from nncert.", "from ")
    out = subprocess.run([sys.executable, "-c", code, str(folder), net_name, name, str(seconds), *extra],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    boxes, seconds = sum(r["boxes"] for r in runs), sum(r["seconds"] for r in runs)
    return {"statuses": [r["status"] for r in runs], "boxes": boxes, "seconds": round(seconds, 2),
            "boxes_per_s": round(boxes / seconds, 1), "mean_s": round(seconds / len(runs), 2)}


def markdown(rows: list[dict], rev: str, seconds: float) -> str:
    lines = [f"Old: `{rev}`; new: this tree. Search alone, default configuration, one thread, "
             f"at most {seconds:g} s a run, rounds alternating.", "",
             "| property | old verdicts | old sub-boxes/s | old mean s | new verdicts | new sub-boxes/s | "
             "new mean s | sub-boxes/s new/old | time old/new |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        old, new = row["old"], row["new"]
        lines.append(f"| {row['property']} | {' '.join(old['statuses'])} | {old['boxes_per_s']:.0f} | "
                     f"{old['mean_s']} | {' '.join(new['statuses'])} | {new['boxes_per_s']:.0f} | {new['mean_s']} | "
                     f"{new['boxes_per_s'] / old['boxes_per_s']:.2f} | {old['mean_s'] / new['mean_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the older git revision to compare against")
    parser.add_argument("--benchmark", type=Path,
                        default=Path(os.environ.get("NNCERT_BENCHMARKS", "/work/shared/benchmarks")) / "vnncomp/acasxu")
    parser.add_argument("--properties", nargs="+", default=DEFAULT_PROPERTIES, help="NET:PROP, e.g. 4_7:prop_1")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grid", type=int, default=4, help="sub-boxes per dimension of the fixed workload (0: none)")
    parser.add_argument("--out", type=Path, help="JSON results (a .md table is written beside it)")
    args = parser.parse_args()
    if not (args.benchmark / "instances.csv").is_file():
        sys.exit(f"error: no ACAS Xu benchmark in {args.benchmark} (set NNCERT_BENCHMARKS or --benchmark)")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            rows = []
            for prop in args.properties:
                for grid in ([0, args.grid] if args.grid else [0]):
                    runs: dict[str, list[dict]] = {"old": [], "new": []}
                    for _ in range(args.rounds):
                        for side, tree in (("old", old_tree), ("new", REPO)):
                            runs[side].append(run_probe(tree, args.benchmark, prop, args.seconds, grid))
                            print(prop, grid, side, runs[side][-1], flush=True)
                    name = f"{prop} grid {grid}^5" if grid else prop
                    rows.append({"property": name, "old": summarize(runs["old"]), "new": summarize(runs["new"])})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, check=True)
    table = markdown(rows, args.rev, args.seconds)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"rev": args.rev, "seconds": args.seconds, "rounds": args.rounds,
                                        "command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
