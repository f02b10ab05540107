"""The evaluation of `train`: bounded by --eval-subset in every part, with a progress bar over the images."""

import json

import torch

from nncert.cli.train import main
from nncert.training.datasets import Dataset
from nncert.training.evaluate import evaluate
from nncert.training.models import build_model
from tests.training.conftest import train_args


def _data(n=20):
    g = torch.Generator().manual_seed(0)
    return Dataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), "mnist")


def test_progress_bar_counts_the_images_and_does_not_change_the_result(capsys):
    torch.manual_seed(0)
    model = build_model("cnn3", "mnist")
    quiet = evaluate(model, _data(), 0.05, batch_size=8, pgd_steps=3, pgd_restarts=1, seed=1)
    assert capsys.readouterr().err == ""
    shown = evaluate(model, _data(), 0.05, batch_size=8, pgd_steps=3, pgd_restarts=1, seed=1, progress="evaluation")
    err = capsys.readouterr().err
    assert "evaluation" in err and "/20 " in err  # a bar over the 20 images
    assert shown == quiet


def test_default_summary_is_bounded_to_1000_test_images(tmp_path, fast_data):
    args = train_args(tmp_path / "run", fast_data, "std", "fc")
    i = args.index("--eval-subset")
    del args[i:i + 2]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n"] == 1000
