"""Splitting a certification run into shards, and merging the shards' results into the run's output.

A run over M samples (or benchmark instances) split into n shards gives shard
i the items at positions i, i + n, i + 2n, ... of the run (round robin, so
neighbouring, often similarly hard, items are spread over the shards). Shard i
of a run whose output is OUT streams its rows to ``OUT.shard-i-of-n``, a
results file of the same format recording the shard's command, versions and
host. The merge reads OUT's shard files (of any n, so a run resumed with
another number of processes merges too; and, when resuming, OUT itself), keeps
one row per (item, domain), in the order of the unsharded run's items, and
writes OUT. It needs every item of the run done in every domain. The shard
files stay (delete them after the merge if you like): merging again is harmless.
"""

from __future__ import annotations

import csv
import os
import platform
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nncert.verifier.instances import COLUMNS, BenchmarkInstance, read_instance_rows, write_header
from nncert.verifier.results import ResultsFile, ResumeError
from nncert.verifier.spec import SpecError

T = TypeVar("T")
SHARD_SUFFIX = re.compile(r"\.shard-(\d+)-of-(\d+)$")


class ShardsIncomplete(Exception):
    """Some items of the run have no result in any shard file yet."""


@dataclass(frozen=True)
class Shard:
    index: int  # 0 <= index < count
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"``, e.g. ``--shard 0/4`` for the first of 4 shards."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not int(match[1]) < int(match[2]):
            raise SpecError(f"invalid --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return cls(int(match[1]), int(match[2]))

    def take(self, items: Sequence[T]) -> Sequence[T]:
        """This shard's items: positions index, index + count, ... (a lazy sequence stays lazy)."""
        return items[self.index::self.count]

    def path(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        return out.with_name(f"{out.name}.shard-{self.index}-of-{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def meta(self) -> dict:
        """What a shard's results file records beyond the run's meta."""
        return {"shard": str(self), "host": platform.node()}


def shard_files(out: str | os.PathLike) -> list[Path]:
    """The shard files of ``out`` (of any shard count), by count then index."""
    out = Path(out)
    found = [(tuple(map(int, SHARD_SUFFIX.search(p.name).groups()))[::-1], p) for p in out.parent.glob("*")
             if p.name.startswith(out.name + ".shard-") and SHARD_SUFFIX.search(p.name)]
    return [p for _, p in sorted(found)]


def _all_files(out: str | os.PathLike) -> list[Path]:
    """OUT's shard files, then OUT if it exists."""
    out = Path(out)
    return shard_files(out) + ([out] if out.exists() else [])


def _merged_rows(sources: list[list[dict]], key: Callable[[dict], Hashable], expected: list[Hashable]) -> list[dict]:
    """One row per expected key, the first found in ``sources``, in the order of ``expected``."""
    first: dict[Hashable, dict] = {}
    for rows in sources:
        for row in rows:
            first.setdefault(key(row), row)
    missing = [k for k in expected if k not in first]
    if missing:
        raise ShardsIncomplete(f"{len(missing)} of {len(expected)} results are missing")
    return [first[k] for k in expected]


def _provenance(meta: dict, path: Path) -> dict:
    return {"file": path.name, **{k: meta.get(k) for k in ("shard", "host", "command", "resumed_from", "versions",
                                                           "device")}}


def finished_samples(out: str | os.PathLike, meta: dict, domains: list[str]) -> set[int]:
    """Sample indices done in every domain in OUT or any of its shard files (files of another set-up refused)."""
    return set().union(*(ResultsFile.load(path, meta, domains).completed() for path in _all_files(out)))


def merge_results(out: str | os.PathLike, meta: dict, domains: list[str], indices: list[int],
                  include_out: bool) -> ResultsFile:
    """OUT written from its shard files (and OUT itself if ``include_out``): every sample of ``indices`` in
    every domain, or ShardsIncomplete. Files made with another set-up are ignored (named in the error)."""
    out = Path(out)
    sources, ignored, shards = [], [], []
    for path in shard_files(out) if not include_out else _all_files(out):
        try:
            results = ResultsFile.load(path, meta, domains)
        except ResumeError:
            ignored.append(path.name)
            continue
        done = results.completed()
        sources.append([row for row in results.rows if row["index"] in done])
        if path != out:
            shards.append(_provenance(results.meta, path))
    expected = [(index, domain) for index in indices for domain in domains]
    try:
        rows = _merged_rows(sources, lambda row: (row["index"], row["domain"]), expected)
    except ShardsIncomplete as e:
        raise ShardsIncomplete(_incomplete(e, out, ignored)) from None
    merged_meta = {key: value for key, value in meta.items() if key not in ("shard", "host")}
    merged = ResultsFile(out, {**merged_meta, "shards": shards}, domains, rows)
    merged.write()
    return merged


def finished_instances(out: str | os.PathLike) -> set[tuple[str, str, str]]:
    """(onnx, vnnlib, domain) done in the results CSV OUT or any of its shard files."""
    return {_instance_key(row) for path in _all_files(out) for row in read_instance_rows(path)}


def merge_instance_results(out: str | os.PathLike, meta: dict, instances: list[BenchmarkInstance],
                           domains: list[str], include_out: bool) -> list[dict]:
    """The results CSV OUT written from its shard files (and OUT if ``include_out``); returns its rows."""
    out = Path(out)
    files = shard_files(out) if not include_out else _all_files(out)
    expected = [(str(inst.onnx), str(inst.vnnlib), domain) for inst in instances for domain in domains]
    try:
        rows = _merged_rows([read_instance_rows(path) for path in files], _instance_key, expected)
    except ShardsIncomplete as e:
        raise ShardsIncomplete(_incomplete(e, out, [])) from None
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        write_header(f, {**meta, "shards": [path.name for path in files if path != out]})
        writer = csv.writer(f)
        writer.writerows([row[column] for column in COLUMNS] for row in rows)
    os.replace(tmp, out)
    return rows


def _instance_key(row: dict) -> tuple[str, str, str]:
    return row["onnx"], row["vnnlib"], row["domain"]


def _incomplete(error: ShardsIncomplete, out: Path, ignored: list[str]) -> str:
    files = ", ".join(p.name for p in shard_files(out)) or "none"
    note = f"; ignored (made with other settings): {', '.join(ignored)}" if ignored else ""
    return f"cannot merge {out}: {error} (shard files: {files}{note})"
