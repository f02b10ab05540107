"""`train --dataset cifar10` end to end in seconds: each method for one epoch on synthetic 3x32x32 images."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nncert.cli.train import main
from nncert.training import trainer
from nncert.training.checkpoint import load_checkpoint
from nncert.training.datasets import Dataset
from nncert.training.models import build_model


def _synthetic(name, split="test", data_dir=None):
    """64 CIFAR-shaped images in [0, 1] whose label is the brightest of 10 vertical stripes (learnable)."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    x = torch.rand(64, 3, 32, 32, generator=g) * 0.5
    y = torch.arange(64) % 10
    for i, label in enumerate(y.tolist()):
        x[i, :, :, 3 * label:3 * label + 3] += 0.5
    return Dataset(x, y, name)


@pytest.mark.parametrize("method", ["std", "ibp", "sabr", "mtl-ibp"])
def test_each_method_trains_a_cifar_model_that_exports(tmp_path, monkeypatch, method):
    monkeypatch.setattr(trainer, "load_dataset", _synthetic)
    out = tmp_path / method
    assert main(["--method", method, "--dataset", "cifar10", "--model", "cnn3", "--eps", "2/255", "--out", str(out),
                 "--subset", "64", "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--ramp-epochs", "1",
                 "--pgd-steps", "2", "--val-size", "16", "--eval-subset", "16", "--eval-pgd-steps", "3",
                 "--quiet"]) == 0
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["eps"] == pytest.approx(2 / 255) and np.isfinite(metrics["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 16 and 0 <= summary["box"] <= summary["pgd"] <= summary["natural"] <= 1
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["augment"] is True and config["lam"] == pytest.approx(0.1)  # the paper's 2/255 recipe
    assert config["mtl_alpha"] == (pytest.approx(4e-3) if method == "mtl-ibp" else None)
    model = build_model("cnn3", "cifar10")
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    x = _synthetic("cifar10").x[:8]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
