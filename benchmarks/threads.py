"""Time of the demo (``certify`` without arguments) per thread setting, on an idle machine and next to a busy process.

Settings: the default (no ``--threads``), ``--threads 1``, ``--threads N`` (N = the cores this process may
use) and ``--threads N`` with spinning OpenMP threads (``OMP_WAIT_POLICY=ACTIVE``: torch's own behaviour,
the commands' default before they chose threads themselves). Each setting runs once without and once with a
concurrent busy process (a single-threaded busy loop, bounded in time, stopped after the run); the settings
alternate within each round so that they see the same machine. Times are wall-clock seconds of the whole
command (start-up included); ratios are to ``--threads 1`` in the same condition and round.

    python benchmarks/threads.py --rounds 2        # a few minutes on 2 cores

Writes ``benchmarks/results/threads.{json,md}`` (versions, cores, load and the command included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.verifier.results import command_line, versions  # noqa: E402

BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """label -> (extra certify arguments, extra environment)."""
    return {"default": ([], {}),
            "--threads 1": (["--threads", "1"], {}),
            f"--threads {cores}": (["--threads", str(cores)], {}),
            f"--threads {cores}, spinning": (["--threads", str(cores)], {"OMP_WAIT_POLICY": "ACTIVE"})}


def run_demo(args: list[str], env: dict[str, str], busy: bool, limit: float) -> dict:
    """One demo run: wall time and the certified count per domain (None if it failed or passed ``limit``)."""
    loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(limit)]) if busy else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.json"
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "nncert.cli.certify", "--quiet", "--json", str(out), *args],
                                  cwd=REPO, env={**os.environ, **env}, capture_output=True, timeout=limit)
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        seconds = time.perf_counter() - start
        certified = ({d: s["certified"] for d, s in json.loads(out.read_text())["summary"].items()}
                     if ok else None)
    if loop is not None:
        loop.kill()
        loop.wait()
    return {"seconds": seconds if ok else None, "certified": certified, "load": os.getloadavg()[0]}


def summarise(runs: list[dict], labels: list[str]) -> list[dict]:
    """Per condition and setting: median seconds and median ratio to --threads 1 of the same round."""
    rows = []
    for busy in (False, True):
        for label in labels:
            mine = [r for r in runs if r["busy"] == busy and r["setting"] == label and r["seconds"]]
            ratios = [r["seconds"] / ref["seconds"] for r in mine for ref in runs
                      if ref["busy"] == busy and ref["round"] == r["round"] and ref["setting"] == "--threads 1"
                      and ref["seconds"]]
            failed = sum(r["busy"] == busy and r["setting"] == label and not r["seconds"] for r in runs)
            rows.append({"busy": busy, "setting": label, "runs": len(mine), "failed": failed,
                         "median_s": statistics.median(r["seconds"] for r in mine) if mine else None,
                         "ratio_to_1_thread": statistics.median(ratios) if ratios else None,
                         "certified": mine[0]["certified"] if mine else None})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Demo (`certify`, bundled model, 100 images, box/deeppoly/mnbab) on {meta['cores']} cores, "
             f"{meta['date']}, commit {meta['versions']['nncert_commit']}, torch {meta['versions']['torch']}, "
             f"{meta['versions']['platform']}; load average before the run {meta['load_before']}.",
             f"Command: `{meta['command']}`. The machine is shared: compare ratios within one condition, "
             "not absolute times across runs.", "",
             "| condition | setting | runs | median s | x `--threads 1` | certified (box/deeppoly/mnbab) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cert = "/".join(str(v) for v in r["certified"].values()) if r["certified"] else "-"
        median = f"{r['median_s']:.1f}" if r["median_s"] else "-"
        ratio = f"{r['ratio_to_1_thread']:.2f}" if r["ratio_to_1_thread"] else "-"
        if r["failed"]:  # failed runs are those that passed the limit (or crashed): they count as slower
            median += f" ({r['failed']} over {meta['limit_s']:g} s)"
        condition = "one busy process" if r["busy"] else "no added load"
        lines.append(f"| {condition} | {r['setting']} | {r['runs'] + r['failed']} | {median} | {ratio} | {cert} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="runs of every setting in each condition")
    p.add_argument("--limit", type=float, default=300.0, help="seconds after which a run counts as failed")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "threads"))
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    table = settings(cores)
    meta = {"command": command_line(), "versions": versions(), "cores": cores, "rounds": args.rounds,
            "limit_s": args.limit, "date": time.strftime("%Y-%m-%d"),
            "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    runs = []
    for round_ in range(args.rounds):
        for busy in (False, True):
            for label, (extra, env) in table.items():
                runs.append({"round": round_, "busy": busy, "setting": label,
                             **run_demo(extra, env, busy, args.limit)})
                print(json.dumps(runs[-1]), flush=True)
    rows = summarise(runs, list(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs, "summary": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
