"""--resume after an interruption continues exactly like an uninterrupted run."""

import json
import signal
from pathlib import Path

import pytest
import torch

from nncert.cli.train import main
from nncert.training import trainer
from nncert.training.checkpoint import load_checkpoint
from nncert.training.trainer import TIMING_FIELDS, read_metrics
from tests.interrupt import interrupt_midway
from tests.training.conftest import _cached_load, train_args


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _summary(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("eval_time_s", "onnx")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir) -> Path:
    """A tiny three-epoch SABR run, uninterrupted: the reference of the resumed runs."""
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "load_dataset", _cached_load)
        assert main(train_args(out, data_dir, "sabr", "cnn5", 3)) == 0
    return out


def _assert_same_run(resumed: Path, straight: Path) -> None:
    expected = _without_timing(read_metrics(straight))
    assert [m["epoch"] for m in expected] == [1, 2, 3]
    assert _without_timing(read_metrics(resumed)) == expected
    assert _summary(resumed) == _summary(straight)
    final, reference = (load_checkpoint(run / "checkpoint.pt")["model"] for run in (resumed, straight))
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, fast_data, straight):
    resumed = tmp_path / "resumed"
    assert main(train_args(resumed, fast_data, "sabr", "cnn5", 1)) == 0
    assert main(train_args(resumed, fast_data, "sabr", "cnn5", 3, "--resume")) == 0
    _assert_same_run(resumed, straight)
    record = json.loads((resumed / "config.json").read_text())
    assert record["config"]["epochs"] == 3 and record["resumed"][0]["from_epoch"] == 1


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, fast_data, straight, monkeypatch):
    """An interrupt while epoch 2's checkpoint is written leaves epoch 1's loadable; --resume redoes epoch 2."""
    real_save, calls = torch.save, []

    def torn_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torn_save)
    run = tmp_path / "run"
    assert main(train_args(run, fast_data, "sabr", "cnn5", 3)) == 130
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(train_args(run, fast_data, "sabr", "cnn5", 3, "--resume")) == 0
    _assert_same_run(run, straight)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_killed_training_resumes_to_the_uninterrupted_run(tmp_path, fast_data, straight, sig):
    """`train` killed after its first checkpoint exits 130; --resume ends with the parameters of a straight run."""
    run = tmp_path / "run"
    # one thread, as in this process: float sums in another order would change the last digits
    code, err = interrupt_midway(["nncert.cli.train", *train_args(run, fast_data, "sabr", "cnn5", 3, "--threads", "1")],
                                 lambda: (run / "checkpoint.pt").is_file(), sig)
    assert code == 130 and "--resume" in err and "Traceback" not in err, err
    assert 1 <= load_checkpoint(run / "checkpoint.pt")["epoch"] <= 3
    assert main(train_args(run, fast_data, "sabr", "cnn5", 3, "--resume")) == 0
    _assert_same_run(run, straight)


def test_resume_rejects_changed_settings(tmp_path, fast_data, capsys):
    assert main(train_args(tmp_path, fast_data, "ibp", "cnn3", 1)) == 0
    capsys.readouterr()
    assert main(train_args(tmp_path, fast_data, "ibp", "cnn3", 2, "--resume", "--lr", "0.01")) == 2
    assert "lr differ" in capsys.readouterr().err
