"""The certify pipeline in float32 and float64 on random networks; memory of long runs."""

from __future__ import annotations

import copy
import gc
import os
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from nncert.cli.certify import demo_files
from nncert.verifier.certify import Pipeline
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.problems import adapt_to_images, linf_instances, vnnlib_instance
from nncert.verifier.results import ResultsFile
from nncert.verifier.run import certify_instances
from nncert.verifier.spec import linf_ball
from nncert.verifier.vnnlib import parse_vnnlib
from tests.paths import vnncomp_dir
from tests.random_nets import random_network


@pytest.mark.parametrize("kind", ["fc", "conv", "residual"])
def test_float32_certificates_hold_in_float64(kind):
    """Whatever float32 certifies, float64 (closer to exact arithmetic) certifies too; complete MN-BaB agrees."""
    statuses = {}
    for dtype in (torch.float32, torch.float64):
        for seed in range(4):
            _, net = random_network(seed, kind, detach=True)
            net = copy.deepcopy(net).to(dtype=dtype)
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(12, *net.input_shape, generator=g)
            with torch.no_grad():
                y = net(x.to(dtype)).argmax(1)
            instances = linf_instances(x, y, 0.03, net.output_shape[0])
            pipeline = Pipeline(net, ["box", "deeppoly", "mnbab"], timeout=1e9, seed=seed)
            for rows in pipeline.run(instances):
                for row in rows:
                    statuses[(dtype, seed, row.index, row.domain)] = row.status
    n_certified = 0
    for (dtype, seed, index, domain), status in statuses.items():
        if dtype == torch.float32 and status == "certified":
            n_certified += 1
            assert statuses[(torch.float64, seed, index, domain)] == "certified", (seed, index, domain)
        if domain == "mnbab":  # complete without a timeout: the same answer in both precisions
            assert status in ("certified", "falsified")
            assert status == statuses[(torch.float64 if dtype == torch.float32 else torch.float32, seed, index,
                                       domain)]
    assert n_certified > 0


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc/self/statm")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _box_run(model, n: int) -> tuple[float, float]:
    """Python bytes (traced peak) and RSS bytes per sample of a streamed Box run over n random images."""
    g = torch.Generator().manual_seed(n)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    pipeline = Pipeline(model.network, ["box"], model.oracle, attack=False, chunk_size=32)
    gc.collect()
    start = _rss()
    tracemalloc.start()
    try:
        results = certify_instances(pipeline, linf_instances(x, y, 0.05, 10), ResultsFile(None, {}, ["box"]),
                                    progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results.summary["box"]["n"] == n
    return peak / n, (_rss() - start) / n


def test_memory_per_sample_stays_small():
    """A long Box run holds the images and one small result row per sample, not a box per sample: the
    instances are built chunk by chunk and nothing of a finished chunk is kept (one image is 3 KB)."""
    onnx_model = load_onnx(demo_files()[0])
    model = adapt_to_images(onnx_model.network, onnx_model.run, (1, 28, 28))
    _box_run(model, 300)  # warm-up: the allocator's pools, lazy initialisation
    python_300, _ = _box_run(model, 300)
    python_1500, rss_1500 = _box_run(model, 1500)
    assert python_1500 < 1000 and python_1500 <= python_300  # the result rows (~0.4 KB each) dominate
    assert rss_1500 < 3000


def test_lazy_instances_match_eagerly_built_boxes():
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    instances = linf_instances(x, y, 0.2, 3, first_index=10)
    assert len(instances) == 5 and [inst.index for inst in instances] == [10, 11, 12, 13, 14]
    third = instances[2]
    lower, upper = linf_ball(x[2], 0.2)
    assert torch.equal(third.props[0].lower, lower) and third.label == 2
    assert torch.equal(third.props[0].upper, upper) and torch.equal(third.clean, x[2])
    rest = instances.without({10, 13})
    assert [inst.index for inst in rest] == [11, 12, 14] and [inst.index for inst in rest[1:]] == [12, 14]


@pytest.mark.parametrize("timeout", [1.0, 2.0])
def test_per_property_timeout_covers_the_attack_and_the_root_bounds(timeout):
    """ACAS Xu property 6 (two input boxes) is beyond a short MN-BaB run: the reported time, which includes the
    PGD attack, DeepPoly, alpha and input-splitting stages of both boxes, stays within 10% of the timeout
    (timeouts of a second and more: the stages stop at step granularity, tens of ms on a loaded machine)."""
    bench = vnncomp_dir()
    if bench is None:
        pytest.skip("VNN-COMP benchmarks not found: set NNCERT_BENCHMARKS")
    onnx_model = load_onnx(bench / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx")
    model = adapt_to_images(onnx_model.network, onnx_model.run, onnx_model.input_shape)
    instance = vnnlib_instance(parse_vnnlib(bench / "acasxu/vnnlib/prop_6.vnnlib"), onnx_model.input_shape,
                               onnx_model.output_size)
    pipeline = Pipeline(model.network, ["mnbab"], model.oracle, timeout=timeout)
    start = time.monotonic()
    [(row,)] = list(pipeline.run([instance]))
    assert row.status in ("timeout", "certified")
    assert row.time_s <= 1.1 * timeout and time.monotonic() - start <= 1.1 * timeout + 0.05
