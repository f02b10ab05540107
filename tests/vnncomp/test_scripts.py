"""The VNN-COMP contract scripts: prepare_instance.sh and run_instance.sh on competition files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nncert.verifier.instances import read_answer
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.spec import PropertyBatch
from nncert.verifier.vnnlib import parse_vnnlib
from tests.paths import vnncomp_dir

SCRIPTS = Path(__file__).resolve().parents[2] / "vnncomp"


def script(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "NNCERT_PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], env=env, capture_output=True, text=True,
                          **kwargs)


@pytest.fixture(scope="module")
def mnist_fc():
    bench = vnncomp_dir()
    if bench is None:
        pytest.skip("VNN-COMP benchmarks not found: set NNCERT_BENCHMARKS")
    return bench / "2022_mnist_fc"


def test_sat_instance_gets_a_valid_counterexample(mnist_fc, tmp_path):
    onnx, vnnlib = mnist_fc / "onnx/mnist-net_256x2.onnx", mnist_fc / "vnnlib/prop_1_0.03.vnnlib"
    assert script("prepare_instance.sh", "v1", "mnist_fc", onnx, vnnlib).returncode == 0
    done = script("run_instance.sh", "v1", "mnist_fc", onnx, vnnlib, tmp_path / "out.txt", 30)
    assert done.returncode == 0, done.stderr
    answer, x, y = read_answer(tmp_path / "out.txt")
    assert answer == "sat"
    model = load_onnx(onnx)
    y_ort = model.run(x.reshape(1, *model.input_shape))[0]
    np.testing.assert_allclose(y, y_ort, rtol=1e-6, atol=1e-6)
    (prop,) = parse_vnnlib(vnnlib)
    assert np.all(x >= prop.lower.numpy() - 1e-9) and np.all(x <= prop.upper.numpy() + 1e-9)
    assert float(PropertyBatch.stack([prop]).property_margin(torch.as_tensor(y_ort, dtype=torch.float64)[None])) <= 0


def test_unsat_instance_and_bad_arguments(mnist_fc, tmp_path):
    onnx, vnnlib = mnist_fc / "onnx/mnist-net_256x2.onnx", mnist_fc / "vnnlib/prop_0_0.03.vnnlib"
    done = script("run_instance.sh", "v1", "mnist_fc", onnx, vnnlib, tmp_path / "out.txt", 30)
    assert done.returncode == 0, done.stderr
    assert read_answer(tmp_path / "out.txt") == ("unsat", None, None)
    assert script("run_instance.sh", "v1", "mnist_fc", onnx).returncode == 2
    assert script("prepare_instance.sh", "v1", "mnist_fc", tmp_path / "missing.onnx", vnnlib).returncode != 0
