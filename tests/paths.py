"""Where the development data and benchmarks live, for tests.

``$NNCERT_DATA`` / ``$NNCERT_BENCHMARKS`` win; otherwise the development copies
in the folder beside the repository (``../shared``), if it exists. Tests that
need a missing folder skip with a message saying which variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path | None:
    candidate = REPO.parent / "shared"
    return candidate if candidate.is_dir() else None


def data_dir() -> Path | None:
    """The folder with MNIST/ (torchvision layout), cifar10/ and eran/, if present."""
    env = os.environ.get("NNCERT_DATA")
    if env:
        return Path(env)
    shared = _shared()
    return shared / "data" if shared and (shared / "data").is_dir() else None


def vnncomp_dir() -> Path | None:
    """The folder with the VNN-COMP benchmarks (2022_mnist_fc, acasxu, 2022_oval21), if present."""
    env = os.environ.get("NNCERT_BENCHMARKS")
    if env:
        return Path(env) / "vnncomp"
    shared = _shared()
    return shared / "benchmarks" / "vnncomp" if shared and (shared / "benchmarks" / "vnncomp").is_dir() else None


def vnncomp_property(benchmark: str, onnx: str, vnnlib: str):
    """``onnx`` and ``vnnlib`` (paths inside the VNN-COMP benchmark folder ``benchmark``) as (OnnxModel,
    PropertyBatch: one property per input box); skips the test when the benchmark is not available."""
    import pytest

    from nncert.verifier.onnx_import import load_onnx
    from nncert.verifier.problems import vnnlib_instance
    from nncert.verifier.spec import PropertyBatch
    from nncert.verifier.vnnlib import parse_vnnlib

    bench = vnncomp_dir()
    if bench is None or not (bench / benchmark).is_dir():
        pytest.skip(f"VNN-COMP benchmark {benchmark} not available (set NNCERT_BENCHMARKS)")
    folder = bench / benchmark
    model = load_onnx(folder / onnx)
    props = parse_vnnlib(folder / vnnlib, n_inputs=None, n_outputs=None)
    return model, PropertyBatch.stack(vnnlib_instance(props, model.input_shape, model.output_size).props)


def mnist_fc_property(net: str, prop: str):
    """VNN-COMP 2022 mnist_fc's ``mnist-net_{net}.onnx`` and ``{prop}.vnnlib`` (see :func:`vnncomp_property`)."""
    return vnncomp_property("2022_mnist_fc", f"onnx/mnist-net_{net}.onnx", f"vnnlib/{prop}.vnnlib")


def acasxu_property(net: str, prop: str):
    """ACAS Xu's ``ACASXU_run2a_{net}_batch_2000.onnx`` and ``{prop}.vnnlib`` (see :func:`vnncomp_property`)."""
    return vnncomp_property("acasxu", f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", f"vnnlib/{prop}.vnnlib")


def reference_result(benchmark: str, onnx: str, vnnlib: str) -> str:
    """The benchmark's known answer (``sat`` / ``unsat``) from its reference_results.csv."""
    import csv

    with open(vnncomp_dir() / benchmark / "reference_results.csv") as f:
        return next(row["best_known"] for row in csv.DictReader(f) if (row["onnx"], row["vnnlib"]) == (onnx, vnnlib))
