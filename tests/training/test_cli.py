"""`train` end to end on a few batches per method, and its one-line errors (exit code 2)."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nncert.cli.train import eps_value, main
from nncert.training.checkpoint import load_checkpoint
from nncert.training.datasets import load_dataset
from nncert.training.models import build_model
from tests.training.conftest import train_args

METRIC_KEYS = {"epoch", "eps", "lr", "train_loss", "train_ce", "train_reg", "train_l1", "val_natural", "val_pgd",
               "val_box", "epoch_time_s", "eval_time_s"}


@pytest.mark.parametrize("method,model", [("std", "fc"), ("pgd", "cnn3"), ("ibp", "cnn3"), ("sabr", "cnn5"),
                                          ("mtl-ibp", "cnn5")])
def test_each_method_writes_a_complete_run(tmp_path, fast_data, method, model):
    out = tmp_path / method
    assert main(train_args(out, fast_data, method, model)) == 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "config.json", "metrics.jsonl", "model.onnx",
                                               "summary.json"}
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics.keys() == METRIC_KEYS and metrics["epoch"] == 1 and metrics["eps"] == pytest.approx(0.1)
    assert 0 <= metrics["val_box"] <= metrics["val_pgd"] <= metrics["val_natural"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 16 and 0 <= summary["box"] <= summary["pgd"] <= summary["natural"] <= 1
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["method"] == method and record["config"]["seed"] == 0
    assert record["command"].startswith("train --method") and {"python", "torch", "nncert"} <= record["versions"].keys()
    _check_onnx_matches_checkpoint(out, model, fast_data)


def _check_onnx_matches_checkpoint(out, model_name, data_dir):
    state = load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert state["epoch"] == 1
    model = build_model(model_name, "mnist", widths=(16, 16))
    model.load_state_dict(state["model"])
    x = load_dataset("mnist", "test", data_dir).x[:8]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: error: ")
    return lines[0]


@pytest.mark.parametrize("change,message", [
    (("--method", "magic"), "invalid choice: 'magic'"),
    (("--model", "resnet"), "invalid choice: 'resnet'"),
    (("--eps", "abc"), "expected a number"),
    (("--eps", "-0.1"), "non-negative"),
    (("--eps", "2"), "larger than the input range"),
    (("--data-dir", "/nonexistent/data"), "does not exist"),
    (("--lambda", "1.5"), "--lambda must be in (0, 1]"),
    (("--resume",), "--resume: no checkpoint"),
    (("--mtl-alpha", "0.5"), "--mtl-alpha applies to --method mtl-ibp only"),
    (("--method", "mtl-ibp", "--mtl-alpha", "1.5"), "--mtl-alpha must be in [0, 1]"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, change, message):
    args = train_args(tmp_path / "run", tmp_path)
    flag = change[0]
    args = args[:args.index(flag)] + list(change) + args[args.index(flag) + 2:] if flag in args else args + list(change)
    assert main(args) == 2
    assert message in _error_line(capsys)


def test_existing_run_needs_resume(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(train_args(tmp_path, tmp_path)) == 2
    assert "pass --resume" in _error_line(capsys)


def test_eps_accepts_fractions():
    assert eps_value("2/255") == pytest.approx(2 / 255)
    assert eps_value("0.3") == 0.3
