"""Float32 verdicts against rounding: networks whose float32 bounds prove what is false."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from nncert.domains.deeppoly import DeepPoly
from nncert.domains.mnbab import MNBaBConfig
from nncert.domains.network import Linear, Network, ReLU
from nncert.verifier import registry
from nncert.verifier.certify import Instance, Pipeline
from nncert.verifier.registry import Options
from nncert.verifier.spec import OutputSpec, Property, PropertyBatch

ONE = torch.ones(1, dtype=torch.float64)


def _net(w1, b1, w2, b2, dtype) -> Network:
    return Network.chain((1,), [Linear(w1.to(dtype), b1.to(dtype)), ReLU(), Linear(w2.to(dtype), b2.to(dtype))])


def _deeppoly_bound(net: Network, x: torch.Tensor) -> float:
    box = x.view(1, 1).to(net.dtype)
    return float(DeepPoly(net, box, box).bound(torch.ones(1, 1, 1, dtype=net.dtype)))


def _cancelling_network() -> tuple[Network, Network]:
    """y = w2 . relu(w1 x + b1) + b2 at x = 1 with float32 weights of 1e3-1e4 whose products (1e7) cancel to
    y < 0, while float32 DeepPoly bounds y by a positive number: (float32 net, the same weights in float64)."""
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        w1 = (torch.rand(8, 1, generator=g) * 1e3 + 1e3).float()
        b1 = (torch.rand(8, generator=g) * 1e3 + 1e4).float()  # every neuron active on x = 1
        w2 = (torch.randn(1, 8, generator=g) * 1e3).float()
        offset = -_deeppoly_bound(_net(w1, b1, w2, torch.zeros(1), torch.float64), ONE)
        for b2 in offset + 4.0 * torch.arange(-4, 5):  # float32's spacing at 1e7
            b2 = torch.tensor([b2]).float()
            net32, net64 = _net(w1, b1, w2, b2, torch.float32), _net(w1, b1, w2, b2, torch.float64)
            if _deeppoly_bound(net64, ONE) < 0 < _deeppoly_bound(net32, ONE):
                return net32, net64
    raise AssertionError("no seed gives float32 and float64 bounds of opposite signs")


def _property(d: float, x: float = 1.0, width: float = 0.0) -> PropertyBatch:
    """y > d over x in [x, x + width]: C = [1], one clause (float64)."""
    box = Property(torch.tensor([x], dtype=torch.float64), torch.tensor([x + width], dtype=torch.float64),
                   OutputSpec(torch.ones(1, 1, dtype=torch.float64), torch.tensor([d], dtype=torch.float64),
                              torch.zeros(1, dtype=torch.long)))
    return PropertyBatch.stack([box])


@pytest.mark.parametrize("domain", ["deeppoly", "mnbab", "milp"])
def test_float32_and_float64_disagree_in_sign_and_float32_does_not_certify(domain):
    net32, net64 = _cancelling_network()
    batch = _property(0.0)
    assert float(net64(torch.ones(1, 1, dtype=torch.float64))) < 0  # the property is false
    deadline = math.inf if domain == "deeppoly" else time.monotonic() + 30
    if domain != "milp":  # unguarded, the float32 bound proves it
        (unguarded,) = registry.run(domain, net32, batch.to(dtype=torch.float32), deadline, Options())
        assert unguarded.status == "certified"
    (verdict,) = registry.run(domain, net32, batch.to(dtype=torch.float32), deadline, Options(), exact=net64)
    assert verdict.status != "certified"


def test_the_pipeline_guards_float32_by_default():
    net32, _ = _cancelling_network()
    batch = _property(0.0)
    instance = Instance(0, [Property(batch.lower[0], batch.upper[0], OutputSpec(batch.C[0], batch.d[0], batch.clause))])
    statuses = {}
    for recheck in (True, False):
        pipeline = Pipeline(copy.deepcopy(net32), ["deeppoly"], attack=False, recheck=recheck)
        (rows,) = list(pipeline.run([instance]))
        statuses[recheck] = rows[0].status
    assert statuses == {True: "unknown", False: "certified"}


def _integer_network(seed: int) -> Network:
    """8 ReLUs with integer weights and biases and w2 in eighths: float64 computes it exactly, float32 rounds
    its products (1e7) to a few units; increasing in x on [1, 2] (sign of w2 . w1 flipped if needed)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randint(1000, 2000, (8, 1), generator=g).double()
    b1 = torch.randint(10000, 20000, (8,), generator=g).double()
    w2 = torch.randint(-8000, 8000, (1, 8), generator=g).double() / 8
    w2 = w2 if float(w2 @ w1) > 0 else -w2
    return _net(w1, b1, w2, torch.zeros(1, dtype=torch.float64), torch.float64)


@pytest.mark.parametrize("below", [0.0, 2.0**-10])
def test_an_exact_minimum_of_zero_or_a_tiny_negative_one_at_a_vertex_is_never_certified(below):
    """y > y(1) - below over x in [1, 2]: the minimum margin is 0 (or -below) at the vertex x = 1. For some
    seed float32 DeepPoly bounds y above the (rounded up) threshold; without the float64 guard, the decision's
    tolerance alone must refuse it."""
    found = 0
    for seed in range(40):
        net64 = _integer_network(seed)
        d = float(net64(torch.ones(1, 1, dtype=torch.float64))) + below  # exact: few bits
        batch = _property(d, width=1.0).to(dtype=torch.float32)
        net32 = copy.deepcopy(net64).to(dtype=torch.float32)
        row = DeepPoly(net32, batch.lower, batch.upper).bound(batch.C)
        if float(row) <= float(batch.d):
            continue
        found += 1
        for exact in (None, net64):
            (verdict,) = registry.run("deeppoly", net32, batch, math.inf, Options(), exact=exact)
            assert verdict.status != "certified"
    assert found > 0


def _network_split_to_prove() -> tuple[Network, Network]:
    """y = w2 . relu(w1 x1 + b1) + b2 + 16 clamp(x2, 0, 0.5), the clamp as 16 (relu(x2) - relu(x2 - 0.5)), on
    x1 = 1, x2 in [-1, 1], with float32 weights of 1e3-1e4 (seed 32 of _cancelling_network's draw) and b2 the
    float32 of minus the exact cancelling part: y = -0.38 for x2 <= 0 exactly, y >= 4 in float32. The root's
    relaxation of the clamp goes down to -4, so float32 proves y > 0 only after a split: (float32 net, float64
    net), inputs (x1, x2)."""
    g = torch.Generator().manual_seed(32)
    w1 = (torch.rand(8, 1, generator=g) * 1e3 + 1e3).float().double()
    b1 = (torch.rand(8, generator=g) * 1e3 + 1e4).float().double()
    w2 = (torch.randn(1, 8, generator=g) * 1e3).float().double()
    b2 = -(w2 @ torch.relu(w1[:, 0] + b1)).float().double()
    w1 = torch.block_diag(w1, torch.ones(2, 1, dtype=torch.float64))
    b1 = torch.cat([b1, torch.tensor([0.0, -0.5], dtype=torch.float64)])
    w2 = torch.cat([w2, torch.tensor([[16.0, -16.0]], dtype=torch.float64)], 1)
    return tuple(Network.chain((2,), [Linear(w1.to(dtype), b1.to(dtype)), ReLU(), Linear(w2.to(dtype), b2.to(dtype))])
                 for dtype in (torch.float32, torch.float64))


@pytest.mark.parametrize("split", ["relu", "input"])
def test_mnbab_subproblems_closed_by_float32_rounding_do_not_certify(split):
    """Branch-and-bound (on ReLUs or on the input box) closes every subproblem in float32, none in float64: the
    guard must not let the float32 search certify."""
    net32, net64 = _network_split_to_prove()
    box = Property(torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64),
                   OutputSpec(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                              torch.zeros(1, dtype=torch.long)))
    batch = PropertyBatch.stack([box])
    assert float(net64(torch.tensor([[1.0, 0.0]], dtype=torch.float64))) < 0  # the property is false
    options = Options(mnbab=MNBaBConfig(split=split))
    (unguarded,) = registry.run("mnbab", net32, batch.to(dtype=torch.float32), time.monotonic() + 30, options)
    assert unguarded.status == "certified" and unguarded.stats["root_margin"] < 0 and unguarded.stats["bab"]
    (verdict,) = registry.run("mnbab", net32, batch.to(dtype=torch.float32), time.monotonic() + 30, options,
                              exact=net64)
    assert verdict.status == "falsified"
