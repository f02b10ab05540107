"""`compare`: several models, radii and domains on the same samples; results.json, table.md and plot.png.

Argument parsing and wiring only; each (model, eps) is one `certify` run (streamed, resumable). A model that
cannot be loaded or run on the samples is reported in one line and marked in the table; the others still run.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nncert.cli.certify import (
    DEFAULT_NUM,
    DEFAULT_TIMEOUT,
    SHARD_WAIT,
    add_sample_options,
    add_shard_options,
    add_verifier_options,
    certify_run,
    check_shard_options,
    check_verifier_options,
    merge_run,
    run_sharded,
)
from nncert.cli.errors import OneLineParser, UserError, run_main, user_errors
from nncert.training import distributed
from nncert.verifier.compare import comparison_rows, comparison_table, model_labels, plot
from nncert.verifier.results import command_line, versions
from nncert.verifier.spec import parse_eps

R = TypeVar("R")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="compare",
                      description="Certify several models at several radii with several domains on the same "
                                  "samples, and compare: DIR/results.json, DIR/table.md, DIR/plot.png.")
    p.add_argument("models", nargs="+", help="ONNX models")
    p.add_argument("--eps", required=True, help="comma-separated L-inf radii, e.g. 0.05,0.1 or 1/255,2/255")
    add_sample_options(p)
    add_verifier_options(p, timeout_help="wall-clock seconds per property (default 60)")
    p.add_argument("--out", required=True, help="output folder (per-run JSON files in DIR/runs/)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out, skipping what is done")
    add_shard_options(p, "each run's DIR/runs/*.json")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main("compare", _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    domains, device = check_verifier_options(args)
    if (args.dataset is None) == (args.inputs is None):
        raise UserError("give one of --dataset or --inputs")
    if len(set(map(str, args.models))) < len(args.models):
        raise UserError("a model is given twice")
    radii = [e.strip() for e in args.eps.split(",") if e.strip()]
    if not radii:
        raise UserError(f"--eps {args.eps!r} gives no radius")
    for eps in radii:  # shared by every model: refused once, before any run
        parse_eps(eps, args.clip_min, args.clip_max)
    check_shard_options(args, args.out, "--out")
    out = Path(args.out)
    plan = [(label, model, eps) for model, label in zip(args.models, model_labels(args.models)) for eps in radii]
    with distributed.process_group(device, backend="gloo", timeout=SHARD_WAIT) as device:
        all_results = run_sharded(
            args, lambda shard: [_guarded(lambda run=run: certify_run(_run_args(args, out, *run), domains, device,
                                                                      shard), run) for run in plan],
            lambda required: _merged([_guarded(lambda run=run: merge_run(_run_args(args, out, *run), domains,
                                                                         device, required), run) for run in plan]),
            [_run_args(args, out, *run).json for run in plan])
    if all_results is None:
        return 0
    runs = []
    for (label, model, eps), results in zip(plan, all_results):
        if isinstance(results, Failed):
            runs.append({"model": label, "path": model, "eps": eps, "error": results.reason})
            continue
        runs.append({"model": label, "path": model, "model_sha256": results.meta["model_sha256"], "eps": eps,
                     "results_file": str(results.path), "summary": results.summary})
        print(f"{label} eps {eps}: " + ", ".join(f"{d} {s['certified']}/{s['n']}"
                                                  for d, s in results.summary.items()), file=sys.stderr)
    rows = comparison_rows(runs, domains)
    meta = {"command": command_line(), "versions": versions(), "seed": args.seed, "domains": domains,
            "eps": radii, "models": args.models, "timeout_s": args.timeout or DEFAULT_TIMEOUT, "dataset": args.dataset,
            "inputs": args.inputs, "start": args.start, "num": args.num or DEFAULT_NUM}
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs, "rows": rows}, indent=1))
    (out / "table.md").write_text(comparison_table(rows, markdown=True))
    plot(rows, out / "plot.png")
    print(comparison_table(rows))
    print(f"results written to {out}/ (results.json, table.md, plot.png)")
    return 2 if any("error" in run for run in runs) else 0


class Failed:
    """A (model, eps) run that could not be made, and why (one line)."""

    def __init__(self, reason: str):
        self.reason = reason


def _guarded(run: Callable[[], R], plan_entry: tuple[str, str, str]) -> R | Failed:
    """The run's result, or Failed with the one-line reason (also on stderr) if its model cannot be used."""
    label, _, eps = plan_entry
    try:
        return run()
    except user_errors() as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"compare: {label} eps {eps}: error: {reason}", file=sys.stderr)
        return Failed(reason)


def _run_args(args, out: Path, label: str, model: str, eps: str):
    """The `certify` arguments of one (model, eps) run, results in DIR/runs/."""
    run_args = copy.copy(args)
    run_args.model, run_args.eps, run_args.vnnlib = model, eps, None
    run_args.json = out / "runs" / f"{re.sub(r'[^A-Za-z0-9.]+', '_', label)}__eps_{_safe(eps)}.json"
    return run_args


def _merged(results: list) -> list | None:
    """All runs' merged results, or None while some run has a shard to finish."""
    return None if any(r is None for r in results) else results


def _safe(eps: str) -> str:
    return re.sub(r"[^0-9.]+", "_", eps)


if __name__ == "__main__":
    sys.exit(main())
