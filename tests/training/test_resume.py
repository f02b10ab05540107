"""--resume after an interruption continues exactly like an uninterrupted run."""

import json

from cli.train import main
from tests.training.conftest import train_args
from training.trainer import TIMING_FIELDS, read_metrics


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _summary(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("eval_time_s", "onnx")}


def test_resume_reproduces_the_uninterrupted_run(tmp_path, fast_data):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(straight, fast_data, "sabr", "cnn5", 2)) == 0
    assert main(train_args(resumed, fast_data, "sabr", "cnn5", 1)) == 0
    assert main(train_args(resumed, fast_data, "sabr", "cnn5", 2, "--resume")) == 0

    expected = _without_timing(read_metrics(straight))
    assert [m["epoch"] for m in expected] == [1, 2]
    assert _without_timing(read_metrics(resumed)) == expected
    assert _summary(resumed) == _summary(straight)
    record = json.loads((resumed / "config.json").read_text())
    assert record["config"]["epochs"] == 2 and record["resumed"][0]["from_epoch"] == 1


def test_resume_rejects_changed_settings(tmp_path, fast_data, capsys):
    assert main(train_args(tmp_path, fast_data, "ibp", "cnn3", 1)) == 0
    capsys.readouterr()
    assert main(train_args(tmp_path, fast_data, "ibp", "cnn3", 2, "--resume", "--lr", "0.01")) == 2
    assert "lr differ" in capsys.readouterr().err
