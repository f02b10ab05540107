"""`compare` end to end on the bundled model: files, table, resume and one-line errors."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from nncert.cli.certify import demo_files
from nncert.cli.compare import main
from tests.interrupt import interrupt_midway


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model, inputs = demo_files()
    for name in ("a", "b"):
        (folder / name).mkdir()
        shutil.copy(model, folder / name / "model.onnx")
    return [folder / "a" / "model.onnx", folder / "b" / "model.onnx"], inputs


def test_compare_writes_results_table_and_plot(two_models, tmp_path, capsys):
    models, inputs = two_models
    out = tmp_path / "cmp"
    args = [*models, "--inputs", inputs, "--eps", "0.1,1/8", "--domain", "box,deeppoly", "--num", "6", "--out", out,
            "--quiet", "--threads", "1"]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["eps"]) for r in data["runs"]] == [("a/model", "0.1"), ("a/model", "1/8"),
                                                             ("b/model", "0.1"), ("b/model", "1/8")]
    assert len(data["rows"]) == 8 and {"command", "versions", "seed", "domains", "eps"} <= set(data["meta"])
    for run in data["runs"]:  # the summaries are those of the streamed per-run files
        assert json.loads(Path(run["results_file"]).read_text())["summary"] == run["summary"]
    by_key = {(r["model"], r["eps"], r["domain"]): r for r in data["rows"]}
    for model in ("a/model", "b/model"):
        for eps in ("0.1", "1/8"):
            assert by_key[(model, eps, "box")]["certified"] <= by_key[(model, eps, "deeppoly")]["certified"]
        assert by_key[(model, "1/8", "deeppoly")]["certified"] <= by_key[(model, "0.1", "deeppoly")]["certified"]
    table = (out / "table.md").read_text()
    assert table.startswith("| model | eps | domain |") and table.count("\n") == 2 + 8
    assert "a/model" in printed and "deeppoly" in printed
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resuming a finished comparison recomputes nothing and gives the same rows
    before = {p.name: p.read_text() for p in (out / "runs").iterdir()}
    assert main([str(a) for a in args] + ["--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == data["rows"]
    after = {p.name: json.loads(p.read_text())["results"] for p in (out / "runs").iterdir()}
    assert after == {name: json.loads(text)["results"] for name, text in before.items()}


@pytest.mark.parametrize("extra, message", [
    (["--eps", ","], "no radius"),
    (["--eps", "0.1", "--domain", "zonotope"], "unknown domain"),
    (["--eps", "-1"], "eps"),
])
def test_bad_arguments_give_one_line(two_models, tmp_path, capsys, extra, message):
    models, inputs = two_models
    code = main([str(models[0]), "--inputs", str(inputs), "--out", str(tmp_path / "o"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_bad_model_is_marked_and_the_others_run(two_models, tmp_path, capsys):
    models, inputs = two_models
    missing = tmp_path / "gone.onnx"
    out = tmp_path / "cmp"
    code = main([str(missing), str(models[0]), "--inputs", str(inputs), "--eps", "0.1", "--domain", "box", "--num",
                 "3", "--out", str(out), "--quiet", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("compare: gone eps 0.1: error: ") and "gone.onnx" in errors[0]
    data = json.loads((out / "results.json").read_text())
    assert "error" in data["runs"][0] and data["runs"][1]["summary"]["box"]["n"] == 3
    assert [(r["model"], "error" in r) for r in data["rows"]] == [("gone", True), ("model", False)]
    assert "| gone | 0.1 | box | - | - | error |" in (out / "table.md").read_text()


def test_model_given_twice_is_refused(two_models, tmp_path, capsys):
    models, inputs = two_models
    code = main([str(models[0]), str(models[0]), "--inputs", str(inputs), "--eps", "0.1", "--out", str(tmp_path)])
    assert code == 2 and "twice" in capsys.readouterr().err


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "mean_time_s")} for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_compare_resumes_to_the_uninterrupted_results(two_models, tmp_path, capsys, sig):
    """Killed midway, compare exits 130 keeping finished samples; --resume ends with the rows of a straight run."""
    model, inputs = two_models[0][0], two_models[1]
    args = [model, "--inputs", inputs, "--eps", "0.1,1/8", "--domain", "box", "--no-attack", "--num", "30",
            "--batch-size", "1", "--quiet", "--threads", "1"]
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    assert main([str(a) for a in [*args, "--out", straight]]) == 0

    def some_done() -> bool:
        return any(len(json.loads(p.read_text())["results"]) >= 4 for p in (out / "runs").glob("*.json"))

    code, err = interrupt_midway(["nncert.cli.compare", *args, "--out", out], some_done, sig)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    assert not (out / "results.json").exists()
    assert main([str(a) for a in [*args, "--out", out, "--resume"]]) == 0
    capsys.readouterr()
    expected, resumed = (json.loads((d / "results.json").read_text()) for d in (straight, out))
    assert _without_times(resumed["rows"]) == _without_times(expected["rows"])
    for run, reference in zip(resumed["runs"], expected["runs"]):
        rows, reference_rows = (json.loads(Path(r["results_file"]).read_text())["results"] for r in (run, reference))
        assert sorted(map(str, _without_times(rows))) == sorted(map(str, _without_times(reference_rows)))
