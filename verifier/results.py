"""Results files (streamed JSON) and the summary table.

Schema, read by other tools, keep the names::

    {"meta": {command, versions, seed, model_sha256, eps, ...},
     "results": [{"index", "label", "predicted", "domain", "status", "time_s"}, ...],
     "summary": {domain: {n, natural, certified, falsified, unknown, timeout, misclassified,
                          mean_time_s, total_time_s}}}

The file is rewritten atomically (write, then rename) after every chunk, so a
crash or Ctrl-C keeps everything computed so far and never leaves a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

STATUS_KEYS = ("certified", "falsified", "unknown", "timeout", "misclassified", "error")
# meta entries that must agree for a run to be resumed from an existing file
RESUME_KEYS = ("model_sha256", "domains", "dtype", "eps", "dataset", "inputs", "split", "vnnlib", "clip", "mean", "std",
               "timeout_s", "seed")


class ResumeError(Exception):
    """An existing results file cannot be continued by this run."""


def versions() -> dict[str, str]:
    """Versions of the interpreter and of the libraries results depend on."""
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("nncert", "torch", "numpy", "scipy", "onnx", "onnxruntime", "highspy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["nncert_commit"] = _COMMIT_AT_START
    return out


def source_commit() -> str:
    """The git commit of this source tree, or 'unknown'.

    '-dirty' marks uncommitted changes to tracked files other than benchmarks/results, which a benchmark
    re-run rewrites in place without changing the code that produced it.
    """
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)benchmarks/results"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


# the code this process runs: taken when it starts, not when a long run writes its results (HEAD may move)
_COMMIT_AT_START = source_commit()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def summarize(rows: list[dict], domains: list[str]) -> dict[str, dict]:
    """Per domain counts and times over result rows (dicts in the JSON schema)."""
    summary = {}
    for domain in domains:
        mine = [r for r in rows if r["domain"] == domain]
        counts = {key: sum(r["status"] == key for r in mine) for key in STATUS_KEYS}
        total = sum(r["time_s"] for r in mine)
        summary[domain] = {"n": len(mine), "natural": len(mine) - counts["misclassified"], **counts,
                           "mean_time_s": total / len(mine) if mine else 0.0, "total_time_s": total}
    return summary


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table: natural / certified accuracy per domain, verdict counts, times (errors if any)."""
    errors = any(s.get("error", 0) for s in summary.values())
    header = ("domain", "n", "natural", "certified", "falsified", "unknown", "timeout", *("error",) * errors,
              "mean s", "total s")
    lines = []
    for domain, s in summary.items():
        n = max(s["n"], 1)
        lines.append((domain, str(s["n"]), f"{100 * s['natural'] / n:.1f}%",
                      f"{s['certified']} ({100 * s['certified'] / n:.1f}%)", str(s["falsified"]),
                      str(s["unknown"]), str(s["timeout"]), *(str(s.get("error", 0)),) * errors,
                      f"{s['mean_time_s']:.3f}", f"{s['total_time_s']:.1f}"))
    return text_table(header, lines)


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule, *(fmt.format(*row) for row in rows)])


class ResultsFile:
    """Accumulates result rows and rewrites the JSON file atomically after each addition."""

    def __init__(self, path: str | os.PathLike | None, meta: dict, domains: list[str], rows: list[dict] = ()):
        self.path = Path(path) if path is not None else None
        self.meta, self.domains, self.rows = meta, domains, list(rows)

    @classmethod
    def load(cls, path: str | os.PathLike, meta: dict, domains: list[str]) -> ResultsFile:
        """The results stored at ``path`` with their own meta; refused unless made with the set-up of ``meta``."""
        path = Path(path)
        try:
            old = json.loads(path.read_text())
            old_meta, rows = old["meta"], old["results"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ResumeError(f"cannot resume: {path} is not a results file") from None
        different = [key for key in RESUME_KEYS if old_meta.get(key) != meta.get(key)]
        if different:
            raise ResumeError(f"cannot resume {path}: it was made with different {', '.join(different)}")
        return cls(path, old_meta, domains, rows)

    @classmethod
    def resume(cls, path: str | os.PathLike, meta: dict, domains: list[str]) -> ResultsFile:
        """Continue the run stored at ``path``: keeps the rows of samples done in every domain.

        Rows of partly done samples are dropped (they are recomputed). A
        missing file starts a fresh run; a file from a different set-up
        (model, radius, domains, ...) is refused.
        """
        path = Path(path)
        if not path.exists():
            return cls(path, meta, domains)
        old = cls.load(path, meta, domains)
        done = old.completed()
        meta = {**meta, "resumed_from": old.meta.get("resumed_from", []) + [old.meta.get("command")]}
        return cls(path, meta, domains, [row for row in old.rows if row["index"] in done])

    def completed(self) -> set[int]:
        """Sample indices that have a row in every domain."""
        seen: dict[int, set[str]] = {}
        for row in self.rows:
            seen.setdefault(row["index"], set()).add(row["domain"])
        return {index for index, domains in seen.items() if set(self.domains) <= domains}

    def add(self, rows: list[dict]) -> None:
        self.rows += rows
        self.write()

    @property
    def summary(self) -> dict[str, dict]:
        return summarize(self.rows, self.domains)

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"meta": self.meta, "results": self.rows, "summary": self.summary}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
