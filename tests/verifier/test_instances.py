"""VNN-COMP instances: reading instances.csv, the results CSV and resume, the competition's result files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncert.verifier.certify import Row
from nncert.verifier.instances import (
    BenchmarkInstance,
    InstanceResults,
    counterexample_text,
    read_answer,
    read_instances,
    run_instances,
    summarize_instances,
)
from nncert.verifier.spec import SpecError


@pytest.fixture
def bench(tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "vnnlib").mkdir()
    for name in ("onnx/a.onnx", "onnx/b.onnx", "vnnlib/p.vnnlib", "vnnlib/q.vnnlib"):
        (tmp_path / name).write_text("x")
    (tmp_path / "instances.csv").write_text("onnx/a.onnx,vnnlib/p.vnnlib,120\n\nonnx/b.onnx, vnnlib/q.vnnlib ,30.5\n")
    return tmp_path


def test_read_instances_resolves_paths_from_the_csv_folder(bench):
    instances = read_instances(bench / "instances.csv")
    assert instances == [BenchmarkInstance(bench / "onnx/a.onnx", bench / "vnnlib/p.vnnlib", 120.0),
                         BenchmarkInstance(bench / "onnx/b.onnx", bench / "vnnlib/q.vnnlib", 30.5)]
    assert instances[1].name == "b__q"


@pytest.mark.parametrize("text, message", [
    ("onnx/a.onnx,vnnlib/p.vnnlib\n", "expected 'onnx,vnnlib,timeout'"),
    ("onnx/a.onnx,vnnlib/p.vnnlib,soon\n", "is not a number"),
    ("onnx/a.onnx,vnnlib/p.vnnlib,-1\n", "must be positive"),
    ("\n", "no instances"),
])
def test_read_instances_rejects_malformed_rows(bench, text, message):
    (bench / "bad.csv").write_text(text)
    with pytest.raises(SpecError, match=message):
        read_instances(bench / "bad.csv")


def test_read_instances_keeps_rows_whose_files_are_missing(bench):
    """A missing file is its instance's error when run (a result row), not the whole benchmark's."""
    (bench / "gone.csv").write_text("onnx/missing.onnx,vnnlib/p.vnnlib,10\nonnx/a.onnx,vnnlib/p.vnnlib,10\n")
    assert [i.name for i in read_instances(bench / "gone.csv")] == ["missing__p", "a__p"]


def test_counterexample_text_is_the_competition_format(tmp_path):
    text = counterexample_text(np.array([[0.5, 1.0]]), np.array([2.0, -3.25]))
    assert text == "((X_0 0.5)\n (X_1 1.0)\n (Y_0 2.0)\n (Y_1 -3.25))"
    (tmp_path / "r.txt").write_text("sat\n" + text + "\n")
    answer, x, y = read_answer(tmp_path / "r.txt")
    assert answer == "sat" and x.tolist() == [0.5, 1.0] and y.tolist() == [2.0, -3.25]
    (tmp_path / "r.txt").write_text("unsat\n")
    assert read_answer(tmp_path / "r.txt") == ("unsat", None, None)


class FakeRunner:
    """Verdicts by instance name; records what it was asked."""

    def __init__(self, verdicts):
        self.verdicts, self.asked = verdicts, []

    def verify(self, instance, domains):
        self.asked.append((instance.name, tuple(domains)))
        for domain in domains:
            status = self.verdicts[instance.name]
            example = torch.tensor([0.25, 0.75]) if status == "falsified" else None
            yield Row(0, None, None, domain, status, 1.5, example)

    def outputs(self, instance, x):
        return x * 2


def test_run_writes_rows_answers_and_resumes(bench, tmp_path):
    instances = read_instances(bench / "instances.csv")
    runner = FakeRunner({"a__p": "falsified", "b__q": "certified"})
    out, answers = tmp_path / "results.csv", tmp_path / "answers"
    meta = {"command": "certify --instances x", "seed": 0}
    results = run_instances(instances[:1], ["box", "mnbab"], InstanceResults(out, meta), runner, answers)
    assert [r["result"] for r in results.rows] == ["sat", "sat"]
    assert (answers / "mnbab" / "a__p.txt").read_text() == (
        "sat\n((X_0 0.25)\n (X_1 0.75)\n (Y_0 0.5)\n (Y_1 1.5))\n")

    again = {"command": "again", "versions": {"nncert_commit": "abc"}}
    resumed = run_instances(instances, ["box", "mnbab"], InstanceResults(out, again, resume=True), runner, answers)
    assert runner.asked == [("a__p", ("box", "mnbab")), ("b__q", ("box", "mnbab"))]  # a__p not redone
    assert (answers / "box" / "b__q.txt").read_text() == "unsat\n"
    text = out.read_text()
    assert text.startswith('# command: "certify --instances x"\n# seed: 0\n'
                           'onnx,vnnlib,domain,status,result,time_s,reason\n')
    assert '# resumed: "again"\n# resumed with versions: {"nncert_commit": "abc"}\n' in text
    summary = summarize_instances(resumed.rows, ["box", "mnbab"])
    assert all(r["reason"] == "" for r in resumed.rows)
    assert summary["box"] == {"n": 2, "unsat": 1, "sat": 1, "timeout": 0, "unknown": 0, "mean_time_s": 1.5,
                              "total_time_s": 3.0}
    assert len(InstanceResults(out, {}, resume=True).rows) == 4


def test_resume_refuses_a_file_that_is_not_an_instances_csv(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SpecError, match="not an instances results file"):
        InstanceResults(tmp_path / "other.csv", {}, resume=True)


def test_resume_drops_a_torn_last_row(tmp_path):
    out = tmp_path / "r.csv"
    results = InstanceResults(out, {"command": "x"})
    instance = BenchmarkInstance(tmp_path / "a.onnx", tmp_path / "p.vnnlib", 10.0)
    results.add(instance, "box", "certified", 1.0)
    with open(out, "a") as f:
        f.write(f"{tmp_path / 'b.onnx'},{tmp_path / 'q.vnnlib'},box,certi")  # killed mid-write
    resumed = InstanceResults(out, {"command": "y"}, resume=True)
    assert [(r["onnx"], r["result"]) for r in resumed.rows] == [(str(instance.onnx), "unsat")]
    assert '\n# resumed: "y"\n' in out.read_text()


class RaisingRunner(FakeRunner):
    """Raises on the instances named in ``bad`` after yielding their first domain's row."""

    def __init__(self, verdicts, bad):
        super().__init__(verdicts)
        self.bad = bad

    def verify(self, instance, domains):
        for i, row in enumerate(super().verify(instance, domains)):
            if instance.name in self.bad and i == 1:
                raise self.bad[instance.name]
            yield row


def test_an_instance_that_raises_gets_error_rows_and_the_run_goes_on(bench, tmp_path, capsys):
    instances = read_instances(bench / "instances.csv")
    runner = RaisingRunner({"a__p": "certified", "b__q": "certified"}, {"a__p": RuntimeError("bad\nmore")})
    out, answers = tmp_path / "results.csv", tmp_path / "answers"
    results = run_instances(instances, ["box", "mnbab"], InstanceResults(out, {}), runner, answers)
    assert [(r["vnnlib"][-8:], r["domain"], r["status"], r["result"], r["reason"]) for r in results.rows] == [
        ("p.vnnlib", "box", "certified", "unsat", ""), ("p.vnnlib", "mnbab", "error", "unknown", "RuntimeError: bad"),
        ("q.vnnlib", "box", "certified", "unsat", ""), ("q.vnnlib", "mnbab", "certified", "unsat", "")]
    assert (answers / "mnbab" / "a__p.txt").read_text() == "unknown\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["certify: a.onnx, p.vnnlib: error: RuntimeError: bad"]
    assert InstanceResults(out, {}, resume=True).rows == results.rows  # the reason survives the file


def test_a_domain_error_row_keeps_its_reason(bench, tmp_path):
    class ErrorRunner(FakeRunner):
        def verify(self, instance, domains):
            yield Row(0, None, None, domains[0], "error", 0.5, reason="RuntimeError: boom")

    instances = read_instances(bench / "instances.csv")[:1]
    results = run_instances(instances, ["mnbab"], InstanceResults(tmp_path / "r.csv", {}), ErrorRunner({}))
    rows = [(r["status"], r["result"], r["reason"]) for r in results.rows]
    assert rows == [("error", "unknown", "RuntimeError: boom")]


def test_resume_reads_files_written_without_the_reason_column(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text("onnx,vnnlib,domain,status,result,time_s\na.onnx,p.vnnlib,box,certified,unsat,1.0\n")
    assert InstanceResults(out, {}, resume=True).rows == [
        {"onnx": "a.onnx", "vnnlib": "p.vnnlib", "domain": "box", "status": "certified", "result": "unsat",
         "time_s": 1.0, "reason": ""}]
