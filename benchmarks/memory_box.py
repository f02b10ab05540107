"""Memory of a long certify run: Box (with the clean check and the PGD attack) over many MNIST test images.

Runs the same steps as ``certify MODEL --dataset mnist --eps EPS --domain box
--json OUT`` (instances, pipeline, streamed results file) on the bundled
demo network and records the resident set size (RSS, from /proc) after every
chunk of ``--batch-size`` samples. Reports

- the RSS before the run, once the instances exist, after the first chunk
  and at the end, and the peak RSS of the process (``ru_maxrss``);
- the growth per sample over the run: the least-squares slope of RSS against
  samples done, from 10% of the samples on (after allocator warm-up), in bytes.

    NNCERT_DATA=../shared/data python benchmarks/memory_box.py --num 10000   # about 10 minutes

Writes ``benchmarks/results/memory_box.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nncert.cli.certify import demo_files  # noqa: E402
from nncert.training.datasets import load_dataset  # noqa: E402
from nncert.verifier.certify import Pipeline  # noqa: E402
from nncert.verifier.onnx_import import load_onnx  # noqa: E402
from nncert.verifier.problems import adapt_to_images, linf_instances  # noqa: E402
from nncert.verifier.results import ResultsFile, command_line, versions  # noqa: E402
from nncert.verifier.run import certify_instances  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class MeasuredResults(ResultsFile):
    """A results file that records (samples done, RSS) after every chunk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace: list[tuple[int, int]] = []

    def add(self, rows: list[dict]) -> None:
        super().add(rows)
        self.trace.append((len({row["index"] for row in self.rows}), rss()))


def growth_per_sample(trace: list[tuple[int, int]], skip: float = 0.1) -> float:
    """Least-squares slope of RSS over samples done, ignoring the first ``skip`` share of the run (bytes)."""
    n, mem = np.array(trace, dtype=float).T
    keep = n >= skip * n[-1]
    return float(np.polyfit(n[keep], mem[keep], 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=10000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default=os.environ.get("NNCERT_DATA"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_box.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    start_rss = rss()
    model_path, _ = demo_files()
    onnx_model = load_onnx(model_path)
    data = load_dataset("mnist", "test", args.data_dir).subset(0, args.num)
    model = adapt_to_images(onnx_model.network, onnx_model.run, tuple(data.x.shape[1:]))
    loaded_rss = rss()
    instances = linf_instances(data.x, data.y, args.eps, onnx_model.output_size)
    instances_rss = rss()
    pipeline = Pipeline(model.network, ["box"], model.oracle, chunk_size=args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        results = MeasuredResults(Path(folder) / "run.json", {}, ["box"])
        begin = time.perf_counter()
        certify_instances(pipeline, instances, results, progress=False)
        seconds = time.perf_counter() - begin
        json_bytes = (Path(folder) / "run.json").stat().st_size
    trace = results.trace
    report = {
        "command": command_line(), "versions": versions(), "threads": args.threads, "num": len(instances),
        "eps": args.eps, "batch_size": args.batch_size, "certified": results.summary["box"]["certified"],
        "time_s": round(seconds, 1),
        "rss_mb": {"start": start_rss / 2**20, "model_and_data_loaded": loaded_rss / 2**20,
                   "instances_built": instances_rss / 2**20, "after_first_chunk": trace[0][1] / 2**20,
                   "end": trace[-1][1] / 2**20, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10},
        "instances_bytes_per_sample": (instances_rss - loaded_rss) / len(instances),
        "growth_bytes_per_sample": growth_per_sample(trace),
        "results_json_bytes_per_sample": json_bytes / len(instances),
        "trace": trace[:: max(len(trace) // 50, 1)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("trace", "versions")}, indent=1))


if __name__ == "__main__":
    main()
