"""VNN-COMP benchmarks: an ``instances.csv`` in, one result row per instance and domain out.

``instances.csv`` has rows ``onnx, vnnlib, timeout`` (paths relative to the
csv's folder, timeout in seconds, no header). The results CSV starts with
``#`` comment lines recording the command, versions, seed and options, then
the header and one row per instance and domain, appended and flushed as each
finishes, so an interrupted run keeps what it did and ``--resume`` skips it.

The competition's answer for a verdict: certified -> ``unsat`` (the property
holds), falsified -> ``sat`` (with a counterexample), else ``unknown`` or
``timeout``. With a result folder, each instance also gets the competition's
result file: the answer on the first line and, after ``sat``, the
counterexample ``((X_0 v) ... (Y_0 v))`` with the outputs computed by the
concrete model (onnxruntime).

An instance whose model or property cannot be loaded or verified (a missing
file, an unsupported op, a malformed property, an exception in a domain) gets
the status ``error`` (the competition's ``unknown``) with the one-line reason
in the ``reason`` column and on stderr, and the run goes on.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nncert.verifier.certify import Pipeline, Row, one_line
from nncert.verifier.onnx_import import OnnxModel, load_onnx
from nncert.verifier.problems import Model, adapt_to_images, vnnlib_instance
from nncert.verifier.results import text_table
from nncert.verifier.spec import SpecError
from nncert.verifier.vnnlib import parse_vnnlib

COLUMNS = ("onnx", "vnnlib", "domain", "status", "result", "time_s", "reason")
ANSWER = {"certified": "unsat", "falsified": "sat", "timeout": "timeout", "unknown": "unknown", "error": "unknown"}


@dataclass(frozen=True)
class BenchmarkInstance:
    onnx: Path
    vnnlib: Path
    timeout: float

    @property
    def name(self) -> str:
        """A file name unique within a benchmark: ``<onnx stem>__<vnnlib stem>``."""
        return f"{_stem(self.onnx)}__{_stem(self.vnnlib)}"


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".onnx").removesuffix(".vnnlib")


def read_instances(path: str | os.PathLike) -> list[BenchmarkInstance]:
    """The rows of a VNN-COMP ``instances.csv``; relative paths are taken from the csv's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read instances {path}: {e.strerror or e}") from None
    instances = []
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 3:
            raise SpecError(f"{path}:{line_no}: expected 'onnx,vnnlib,timeout', got {','.join(row)!r}")
        onnx, vnnlib, timeout = (cell.strip() for cell in row)
        try:
            seconds = float(timeout)
        except ValueError:
            raise SpecError(f"{path}:{line_no}: timeout {timeout!r} is not a number") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise SpecError(f"{path}:{line_no}: timeout must be positive, got {timeout}")
        # a missing file is that instance's error (see run_instances), not the whole benchmark's
        instances.append(BenchmarkInstance(path.parent / onnx, path.parent / vnnlib, seconds))
    if not instances:
        raise SpecError(f"{path}: no instances")
    return instances


def counterexample_text(x: np.ndarray, y: np.ndarray) -> str:
    """The competition's counterexample: flat inputs X_i and outputs Y_j."""
    pairs = [f"(X_{i} {v!r})" for i, v in enumerate(x.ravel().astype(float).tolist())]
    pairs += [f"(Y_{j} {v!r})" for j, v in enumerate(y.ravel().astype(float).tolist())]
    return "(" + "\n ".join(pairs) + ")"


def read_answer(path: str | os.PathLike) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """A competition result file: (answer, flat inputs X, outputs Y), X and Y only after ``sat``."""
    text = Path(path).read_text().strip()
    answer, _, rest = text.partition("\n")
    answer = answer.strip()
    if answer != "sat":
        return answer, None, None
    values = {}
    for name, value in re.findall(r"\(\s*([XY]_\d+)\s+([^()\s]+)\s*\)", rest):
        values[name] = float(value)
    xs = [values[f"X_{i}"] for i in range(sum(k.startswith("X_") for k in values))]
    ys = [values[f"Y_{j}"] for j in range(sum(k.startswith("Y_") for k in values))]
    return answer, np.array(xs), np.array(ys)


def write_answer(path: Path, status: str, counterexample: str | None = None) -> None:
    """The competition's result file for one instance (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(ANSWER.get(status, "unknown") + "\n" + (counterexample + "\n" if counterexample else ""))
    os.replace(tmp, path)


def write_header(f, meta: dict) -> None:
    """The metadata as ``# key: json`` comment lines, then the column names."""
    for key, value in meta.items():
        f.write(f"# {key}: {json.dumps(value)}\n")
    csv.writer(f).writerow(COLUMNS)


def read_instance_rows(path: Path) -> list[dict]:
    """The rows of an instances results CSV (time_s as float)."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) not in (COLUMNS, COLUMNS[:-1]):  # files without reasons resume too
        raise SpecError(f"cannot resume: {path} is not an instances results file")
    rows = []
    for row in reader:
        row["reason"] = row.get("reason") or ""  # a row torn by a hard kill is dropped: its instance runs again
        try:
            row["time_s"] = float(row["time_s"])
        except (TypeError, ValueError):
            continue
        if row["result"] in ANSWER.values():
            rows.append(row)
    return rows


class InstanceResults:
    """The results CSV of a benchmark run: comment lines of metadata, a header, one row per instance and domain."""

    def __init__(self, path: str | os.PathLike, meta: dict, resume: bool = False):
        self.path = Path(path)
        self.rows: list[dict] = []
        if resume and self.path.exists():
            self.rows = self._read()
            torn = not self.path.read_bytes().endswith(b"\n")
            with open(self.path, "a") as f:
                f.write(("\n" if torn else "") + f"# resumed: {json.dumps(meta.get('command'))}\n")
                if "versions" in meta:  # the resumed part may run other code
                    f.write(f"# resumed with versions: {json.dumps(meta['versions'])}\n")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            write_header(f, meta)

    def _read(self) -> list[dict]:
        return read_instance_rows(self.path)

    def done(self) -> set[tuple[str, str, str]]:
        return {(row["onnx"], row["vnnlib"], row["domain"]) for row in self.rows}

    def add(self, instance: BenchmarkInstance, domain: str, status: str, time_s: float, reason: str = "") -> None:
        row = {"onnx": str(instance.onnx), "vnnlib": str(instance.vnnlib), "domain": domain, "status": status,
               "result": ANSWER.get(status, "unknown"), "time_s": round(time_s, 4), "reason": reason}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in COLUMNS])
            f.flush()
            os.fsync(f.fileno())


class Runner:
    """Verifies benchmark instances: loads each model (kept while consecutive instances share it), parses the
    property and runs a pipeline made by ``make_pipeline(model, domains, timeout)``.

    ``timeout`` overrides the instances' own timeouts when given.
    """

    def __init__(self, make_pipeline: Callable[[Model, list[str], float], Pipeline], timeout: float | None = None):
        self.make_pipeline, self.timeout = make_pipeline, timeout
        self._loaded: tuple[Path, OnnxModel] | None = None

    def model(self, instance: BenchmarkInstance) -> OnnxModel:
        if self._loaded is None or self._loaded[0] != instance.onnx:
            self._loaded = (instance.onnx, load_onnx(instance.onnx))
        return self._loaded[1]

    def verify(self, instance: BenchmarkInstance, domains: list[str]) -> Iterator[Row]:
        """One row per domain, as each finishes."""
        for file in (instance.onnx, instance.vnnlib):
            if not file.is_file():
                raise SpecError(f"{file} not found")
        onnx_model = self.model(instance)
        props = parse_vnnlib(instance.vnnlib)
        problem = vnnlib_instance(props, onnx_model.input_shape, onnx_model.output_size)
        model = adapt_to_images(onnx_model.network, onnx_model.run, onnx_model.input_shape)
        pipeline = self.make_pipeline(model, domains, self.timeout or instance.timeout)
        for rows in pipeline.run([problem]):
            yield from rows

    def outputs(self, instance: BenchmarkInstance, x: np.ndarray) -> np.ndarray:
        """The concrete model (onnxruntime) on one input in the model's layout."""
        onnx_model = self.model(instance)
        return onnx_model.run(x.reshape(1, *onnx_model.input_shape))[0]


def run_instances(instances: list[BenchmarkInstance], domains: list[str], results: InstanceResults, runner: Runner,
                  answers: Path | None = None, progress: Callable[[InstanceResults], None] | None = None
                  ) -> InstanceResults:
    """Verifies every instance in every domain not already in ``results``; with ``answers``, writes the
    competition's result file of each to ``answers/<domain>/<onnx>__<vnnlib>.txt``.

    An instance that raises gets an ``error`` row in each domain it had not finished, and the run goes on.
    """
    done = results.done()
    for instance in instances:
        todo = [d for d in domains if (str(instance.onnx), str(instance.vnnlib), d) not in done]
        start = time.monotonic()
        try:
            for row in runner.verify(instance, list(todo)) if todo else ():
                todo.remove(row.domain)
                _record(instance, row.domain, row.status, row.time_s, results, runner, answers, row.counterexample,
                        row.reason or "")
        except Exception as e:  # noqa: BLE001 -- one bad instance must not end a benchmark run
            reason = one_line(e)
            print(f"certify: {instance.onnx.name}, {instance.vnnlib.name}: error: {reason}", file=sys.stderr)
            for domain in todo:
                _record(instance, domain, "error", time.monotonic() - start, results, runner, answers, reason=reason)
        if progress is not None:
            progress(results)
    return results


def _record(instance: BenchmarkInstance, domain: str, status: str, time_s: float, results: InstanceResults,
            runner: Runner, answers: Path | None, counterexample=None, reason: str = "") -> None:
    """One result row, and the competition's result file when asked for."""
    results.add(instance, domain, status, time_s, reason)
    if answers is None:
        return
    text = None
    if status == "falsified":
        x = counterexample.double().numpy()
        text = counterexample_text(x, runner.outputs(instance, x))
    write_answer(answers / domain / f"{instance.name}.txt", status, text)


def summarize_instances(rows: list[dict], domains: list[str]) -> dict[str, dict]:
    """Per domain: instances, answers (unsat / sat / unknown / timeout) and times."""
    summary = {}
    for domain in domains:
        mine = [r for r in rows if r["domain"] == domain]
        total = sum(float(r["time_s"]) for r in mine)
        summary[domain] = {"n": len(mine), **{a: sum(r["result"] == a for r in mine) for a in ANSWER.values()},
                           "mean_time_s": total / len(mine) if mine else 0.0, "total_time_s": total}
    return summary


def format_instance_table(summary: dict[str, dict]) -> str:
    header = ("domain", "n", "unsat", "sat", "unknown", "timeout", "mean s", "total s")
    return text_table(header, [(d, *(str(s[k]) for k in header[1:6]), f"{s['mean_time_s']:.2f}",
                                f"{s['total_time_s']:.1f}") for d, s in summary.items()])
