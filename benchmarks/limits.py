"""Time and memory limits of `certify --domain mnbab`, two code versions side by side in one run.

Cases:

- ``conv``: a 16-dim input feeding a CIFAR-sized conv net (Linear 16 -> 3x32x32, Conv 3->32 and 32->64 with
  stride 2, FC 4096 -> 100 -> 10; random weights, seed 0) and a robustness property around a random point
  (eps 0.05), ``--bab-split relu --timeout 30``: the shape on which the optimised-slope stage grew with the
  square of the width (issue 31);
- ``mnist_fc``: two VNN-COMP 2022 mnist_fc 256x4 instances that MN-BaB decides, to show no regression.

Each run is a fresh ``python -m nncert.cli.certify`` with ``--threads 1`` in the source tree of its version; the
wall time (process start to exit, including imports and model loading), the time the results file reports
and the peak resident set size (``ru_maxrss`` of that child) are recorded. A run whose RSS passes
``--kill-above`` is killed (recorded as such) to protect the machine.

    git archive <old commit> | tar -x -C /tmp/before
    NNCERT_BENCHMARKS=../shared/benchmarks python benchmarks/limits.py --before /tmp/before

Writes ``benchmarks/results/limits.json`` and ``limits.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_conv_case(folder: Path) -> tuple[Path, Path]:
    """The conv net and its property (seeded), written to ``folder``."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Image(nn.Module):
        def forward(self, x):
            return x.reshape(-1, 3, 32, 32)

    model = nn.Sequential(nn.Linear(16, 3 * 32 * 32), Image(), nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 64, 100), nn.ReLU(),
                          nn.Linear(100, 10)).eval()
    onnx_path, vnnlib_path = folder / "conv16.onnx", folder / "conv16.vnnlib"
    torch.onnx.export(model, torch.zeros(1, 16), str(onnx_path), dynamo=False, input_names=["x"],
                      output_names=["y"])
    x = torch.rand(16)
    label = int(model(x[None]).argmax())
    lines = [f"(declare-const X_{i} Real)" for i in range(16)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    lines += [f"(assert (>= X_{i} {float(v) - 0.05}))\n(assert (<= X_{i} {float(v) + 0.05}))"
              for i, v in enumerate(x)]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    vnnlib_path.write_text("\n".join(lines) + "\n")
    return onnx_path, vnnlib_path


def run(tree: Path, args: list[str], kill_above: int) -> dict:
    """One certify run in source tree ``tree``: status, reported and wall seconds, peak RSS."""
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "stderr", "w+") as err:
        out = Path(tmp) / "r.json"
        command = [sys.executable, "-m", "nncert.cli.certify", *args, "--threads", "1", "--quiet", "--json", str(out)]
        start = time.monotonic()
        child = subprocess.Popen(command, cwd=tree, stdout=subprocess.DEVNULL, stderr=err)
        killed = threading.Event()
        threading.Thread(target=_watch, args=(child.pid, kill_above, killed), daemon=True).start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        row = {"command": " ".join(["certify", *args, "--threads", "1"]), "wall_s": round(wall, 2),
               "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "exit": child.returncode}
        if killed.is_set():
            return {**row, "status": f"killed above {kill_above / 2**30:.0f} GB"}
        if child.returncode != 0:
            err.seek(0)
            return {**row, "status": "error: " + (err.read().strip().splitlines() or ["?"])[-1]}
        result = json.loads(out.read_text())["results"][0]
        return {**row, "status": result["status"], "time_s": round(result["time_s"], 2)}


def _watch(pid: int, limit: int, killed: threading.Event) -> None:
    """Kills ``pid`` once its RSS passes ``limit`` bytes."""
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return
        if rss > limit:
            killed.set()
            os.kill(pid, 9)
            return
        time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="source tree of the version to compare against")
    p.add_argument("--kill-above", type=float, default=12.0, help="GB of RSS at which a run is killed")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/limits")
    p.add_argument("--cases", help="comma-separated case names to run (default: all); their rows replace those "
                                   "of the same case in an existing --out")
    args = p.parse_args()
    bench = Path(os.environ.get("NNCERT_BENCHMARKS", REPO.parent / "shared/benchmarks")) / "vnncomp/2022_mnist_fc"
    folder = Path(tempfile.mkdtemp())
    onnx_path, vnnlib_path = make_conv_case(folder)
    conv = [str(onnx_path), "--vnnlib", str(vnnlib_path), "--domain", "mnbab", "--bab-split", "relu",
            "--timeout", "30"]
    cases = {"conv": conv, "conv --max-memory 1G": [*conv, "--max-memory", "1G"],
             "conv --timeout 120 --max-memory 1G": [*conv, "--timeout", "120", "--max-memory", "1G"]}
    for prop in ("prop_8_0.03", "prop_3_0.05"):
        cases[f"mnist_fc 256x4 {prop}"] = [str(bench / "onnx/mnist-net_256x4.onnx"), "--vnnlib",
                                           str(bench / f"vnnlib/{prop}.vnnlib"), "--domain", "mnbab",
                                           "--timeout", "120"]
    chosen = args.cases.split(",") if args.cases else list(cases)
    old = json.loads(args.out.with_suffix(".json").read_text())["rows"] if args.cases else []
    rows = [row for row in old if row["case"] not in chosen]
    for name, case in ((name, cases[name]) for name in chosen):
        for version, tree in (("before", args.before), ("after", REPO)):
            rows.append({"case": name, "version": version, **run(tree, case, int(args.kill_above * 2**30))})
            print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"commands": [" ".join(["python", *sys.argv])], "before": str(args.before), "after": [commit],
            "threads": 1, "machine": f"{os.cpu_count()} cores"}
    if args.cases:  # the rows kept come from the earlier runs
        earlier = json.loads(args.out.with_suffix(".json").read_text())["meta"]
        meta.update(commands=earlier["commands"] + meta["commands"], after=earlier["after"] + meta["after"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    header = "| case | version | status | reported s | wall s | peak RSS GB |\n|---|---|---|---|---|---|\n"
    lines = [f"| {r['case']} | {r['version']} | {r['status']} | {r.get('time_s', '-')} | {r['wall_s']} | "
             f"{r['peak_rss_gb']} |" for r in rows]
    commands = "".join(f"`{command}`\n\n" for command in meta["commands"])
    args.out.with_suffix(".md").write_text(commands + header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
