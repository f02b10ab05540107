"""MILP: exact minima attained by real points, never above a concrete value, never below DeepPoly; verdicts."""

import pytest
import torch

from nncert.domains import milp
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import network_from_torch
from nncert.domains.milp import BackendUnavailable, milp_minimize, milp_verify
from nncert.domains.network import (
    Add,
    AvgPool2d,
    Conv2d,
    ElementwiseAffine,
    Linear,
    Network,
    Pad,
    ReLU,
    Reshape,
    Transpose,
)
from tests.random_nets import fc_model, random_network
from tests.soundness import concrete_minimum

KINDS = ["fc", "conv", "residual"]
EPS = {"fc": 0.1, "conv": 0.03, "residual": 0.1}  # box radius per kind: conv MILPs get slow beyond ~0.05
TOL = 1e-5


def _box(net: Network, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*net.input_shape, generator=g)
    return x - eps, x + eps


def _outputs(net: Network, x: torch.Tensor) -> torch.Tensor:
    """net(x) for inputs (N, *input_shape) -> (N, n_out)."""
    with torch.no_grad():
        return net(x).reshape(len(x), -1)


def _samples(lower: torch.Tensor, upper: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lower + (upper - lower) * torch.rand(n, *lower.shape, generator=g)


def _clause_margins(net, x, C, d, clause) -> torch.Tensor:
    """Property margin (min over clauses of max over rows of C_j y - d_j) at inputs x (N, *in) -> (N,)."""
    rows = _outputs(net, x) @ C.T - d
    n_clauses = int(clause.max()) + 1
    return torch.stack([rows[:, clause == k].amax(1) for k in range(n_clauses)], 1).amin(1)


def _robustness(label: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clauses ``y_label - y_i <= 0`` (one row each) for i != label."""
    others = [i for i in range(n) if i != label]
    C = torch.zeros(len(others), n)
    C[:, label] = 1.0
    C[torch.arange(len(others)), others] = -1.0
    return C, torch.zeros(len(others)), torch.arange(len(others))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_minimize_is_exact(kind, seed):
    _, net = random_network(seed, kind, detach=True)
    lower, upper = _box(net, seed, EPS[kind])
    c = torch.randn(net.output_shape, generator=torch.Generator().manual_seed(100 + seed))
    value, x = milp_minimize(net, lower, upper, c)
    assert x.shape == lower.shape and x.dtype == lower.dtype
    assert bool(((x >= lower) & (x <= upper)).all())
    assert abs(float(_outputs(net, x[None])[0] @ c) - value) < TOL  # attained by a real point
    witness = concrete_minimum(net, lower[None], upper[None], c[None, None], samples=2000, seed=seed)
    assert value <= float(witness) + TOL  # nothing below the exact minimum exists
    with torch.no_grad():
        relaxed = DeepPoly(net, lower[None], upper[None]).bound(c[None, None])
    assert value >= float(relaxed) - TOL
    assert net.dtype == torch.float32  # the caller's network is left as it was


def test_mnist_sized_net():
    """784 inputs, 2x50 hidden: exact minimum and both verdicts within seconds."""
    net = network_from_torch(fc_model(0, widths=(50, 50), n_in=784, n_out=10), (784,)).detach()
    lower, upper = _box(net, 0, 0.003)
    points = _samples(lower, upper, 2000, 0)
    c = torch.randn(10, generator=torch.Generator().manual_seed(0))
    value, x = milp_minimize(net, lower, upper, c, timeout=30)
    assert abs(float(_outputs(net, x[None])[0] @ c) - value) < TOL
    assert value <= float((_outputs(net, points) @ c).min()) + TOL
    label = int(_outputs(net, ((lower + upper) / 2)[None]).argmax())
    C, d, clause = _robustness(label, 10)
    result = milp_verify(net, lower, upper, C, d, clause, timeout=30)
    assert result.status == "certified"
    assert 0 < result.margin <= float(_clause_margins(net, points, C, d, clause).min()) + TOL
    lower, upper = _box(net, 0, 0.005)
    result = milp_verify(net, lower, upper, C, d, clause, timeout=30)
    assert result.status == "falsified"
    assert float(_clause_margins(net, result.counterexample[None], C, d, clause)[0]) <= 0


@pytest.mark.parametrize("kind", KINDS)
def test_verify_agrees_with_exact_minima(kind):
    """Certified iff every clause's exact minimum is > 0; falsified points really violate; exact margins."""
    statuses = set()
    for seed in range(3):
        _, net = random_network(seed, kind, detach=True)
        for eps in (0.01, 3 * EPS[kind] if kind != "conv" else EPS[kind]):
            lower, upper = _box(net, seed, eps)
            label = int(_outputs(net, ((lower + upper) / 2)[None]).argmax())
            C, d, clause = _robustness(label, 3)
            minima = torch.tensor([milp_minimize(net, lower, upper, C[k])[0] for k in range(len(C))])
            result = milp_verify(net, lower, upper, C, d, clause)
            exact = milp_verify(net, lower, upper, C, d, clause, exact=True)
            assert result.status == exact.status == ("certified" if bool((minima > 0).all()) else "falsified")
            statuses.add(result.status)
            if result.status == "certified":
                assert result.counterexample is None and 0 < result.margin <= float(minima.min()) + TOL
                assert abs(exact.margin - float(minima.min())) < TOL
            else:
                for r in (result, exact):
                    x = r.counterexample
                    assert bool(((x >= lower) & (x <= upper)).all())
                    assert float(_clause_margins(net, x[None], C, d, clause)[0]) <= 0
                    assert r.margin <= 0
                assert float(minima.min()) - TOL <= exact.margin
    assert statuses == {"certified", "falsified"}


@pytest.mark.parametrize("gap", [0.3, -0.3])
def test_conjunction_clause_margin(gap):
    """Rows ``c y <= a`` and ``-c y <= -b``: unsatisfiable iff b > a, with margin (b - a) / 2."""
    _, net = random_network(1, "fc", detach=True)
    lower, upper = _box(net, 1, 0.2)
    c = torch.tensor([1.0, -1.0, 0.5])
    low = milp_minimize(net, lower, upper, c)[0]
    high = -milp_minimize(net, lower, upper, -c)[0]
    assert high - low > 2 * abs(gap)  # both thresholds fall inside the range of c . y
    mid = (low + high) / 2
    a, b = mid - gap / 2, mid + gap / 2
    C, d = torch.stack([c, -c]), torch.tensor([a, -b])
    result = milp_verify(net, lower, upper, C, d, torch.zeros(2, dtype=torch.long), exact=True)
    assert abs(result.margin - gap / 2) < TOL
    assert result.status == ("certified" if gap > 0 else "falsified")
    if gap < 0:
        y = _outputs(net, result.counterexample[None])[0]
        assert a >= float(c @ y) >= b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_two_row_clauses_against_sampling(kind, seed):
    """A clause of two random rows with thresholds from sample quantiles, plus a robustness clause."""
    _, net = random_network(seed, kind, detach=True)
    lower, upper = _box(net, seed, EPS[kind])
    points = _samples(lower, upper, 3000, seed)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(2, 3, generator=g)
    values = _outputs(net, points) @ rows.T
    q = 0.02 if seed % 2 else 0.3
    C = torch.cat([rows, torch.tensor([[1.0, -1.0, 0.0]])])
    d = torch.cat([values.quantile(q, dim=0), torch.tensor([-50.0])])
    clause = torch.tensor([0, 0, 1])
    sampled = _clause_margins(net, points, C, d, clause)
    result = milp_verify(net, lower, upper, C, d, clause, exact=True)
    if bool((sampled <= 0).any()):
        assert result.status == "falsified"
    if result.status == "certified":
        assert result.margin > 0
    else:
        assert result.status == "falsified"
        assert float(_clause_margins(net, result.counterexample[None], C, d, clause)[0]) <= 0
    assert result.margin <= float(sampled.min()) + TOL  # the exact margin is below every sampled one


def test_zero_timeout_is_not_a_verdict():
    _, net = random_network(0, "conv", detach=True)
    lower, upper = _box(net, 0, 0.1)
    C, d, clause = _robustness(0, 3)
    result = milp_verify(net, lower, upper, C, d, clause, timeout=0.0)
    assert (result.status, result.margin, result.counterexample) == ("timeout", None, None)
    assert milp_minimize(net, lower, upper, C[0], timeout=0.0) is None


def test_short_timeout_gives_timeout_or_a_real_counterexample():
    _, net = random_network(2, "conv", detach=True)  # a property that takes the MILP seconds to falsify
    lower, upper = _box(net, 2, 0.07)
    label = int(_outputs(net, ((lower + upper) / 2)[None]).argmax())
    C, d, clause = _robustness(label, 3)
    assert bool((_clause_margins(net, _samples(lower, upper, 3000, 0), C, d, clause) <= 0).any())
    result = milp_verify(net, lower, upper, C, d, clause, timeout=0.05)
    assert result.status in ("timeout", "falsified") and result.time_s < 2.0
    if result.status == "falsified":
        assert float(_clause_margins(net, result.counterexample[None], C, d, clause)[0]) <= 0


def _small_problem():
    _, net = random_network(0, "fc", detach=True)
    lower, upper = _box(net, 0, 0.1)
    return (net, lower, upper, *_robustness(0, 3))


@pytest.mark.skipif(milp._gurobi_installed(), reason="gurobipy is installed")
def test_gurobi_backend_without_gurobipy_raises_clearly():
    with pytest.raises(BackendUnavailable, match="gurobipy"):
        milp_verify(*_small_problem(), backend="gurobi")
    assert milp_verify(*_small_problem(), backend="auto").backend == "highs"


def test_refused_gurobi_licence_falls_back_to_highs(monkeypatch):
    monkeypatch.setattr(milp, "_gurobi_installed", lambda: True)
    monkeypatch.setattr(milp, "_solve_gurobi", lambda *args: None)  # e.g. a size-limited licence
    reference = milp_verify(*_small_problem(), backend="highs")
    for backend in ("gurobi", "auto"):
        result = milp_verify(*_small_problem(), backend=backend)
        assert (result.backend, result.status) == ("highs", reference.status)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        milp_verify(*_small_problem(), backend="cplex")


def test_affine_matrices_match_forward():
    """Every affine op of the IR as (W, b) from its backward: W x + b == forward(x)."""
    g = torch.Generator().manual_seed(0)
    ops = [
        (Pad((1, 0, 2, 1)), (0,)),
        (Conv2d(torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, generator=g), (2, 1), (1, 1)), (1,)),
        (AvgPool2d((2, 2), (1, 1)), (2,)),
        (ElementwiseAffine(torch.randn(3, 1, 1, generator=g), torch.randn(3, 1, 1, generator=g)), (3,)),
        (Transpose((1, 2, 0)), (4,)),
        (Reshape((-1,)), (5,)),
        (Linear(torch.randn(7, 36, generator=g), torch.randn(7, generator=g)), (6,)),
        (ReLU(), (7,)),
        (Linear(torch.randn(7, 7, generator=g), torch.randn(7, generator=g)), (8,)),
        (Add(), (9, 7)),
    ]
    net = Network((2, 5, 4), ops).to(dtype=torch.float64)
    values = net(torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64), return_all=True)
    for i, node in enumerate(net.nodes[1:], start=1):
        if isinstance(node.op, ReLU):
            continue
        Ws, b = milp._affine_matrices(node.op)
        out = sum(W @ values[j].reshape(-1).numpy() for W, j in zip(Ws, node.inputs)) + b
        assert torch.allclose(torch.from_numpy(out), values[i].reshape(-1), atol=1e-10), repr(node.op)


@pytest.mark.parametrize("kind", ["leakyrelu", "maxpool"])
@pytest.mark.parametrize("seed", range(4))
def test_minimize_is_exact_with_leaky_relu_and_maxpool(kind, seed):
    """LeakyReLU and MaxPool are encoded exactly: the minimum is attained, nothing lies below it, DeepPoly is
    below it."""
    _, net = random_network(seed, kind, detach=True)
    lower, upper = _box(net, seed, 0.15 if kind == "leakyrelu" else 0.05)
    c = torch.randn(net.output_shape, generator=torch.Generator().manual_seed(100 + seed))
    value, x = milp_minimize(net, lower, upper, c)
    assert abs(float(_outputs(net, x[None])[0] @ c) - value) < TOL * (1 + abs(value))
    witness = concrete_minimum(net, lower[None], upper[None], c[None, None], samples=2000, seed=seed)
    assert value <= float(witness) + TOL
    with torch.no_grad():
        relaxed = DeepPoly(net, lower[None], upper[None]).bound(c[None, None])
    assert value >= float(relaxed) - TOL


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_are_refused(kind):
    _, net = random_network(0, kind, detach=True)
    lower, upper = _box(net, 0, 0.1)
    assert "at node 2" in milp.unsupported_op(net)
    with pytest.raises(milp.NotEncodable, match="not piecewise linear"):
        milp_minimize(net, lower, upper, torch.ones(net.output_shape))
    assert milp.unsupported_op(random_network(0, "maxpool")[1]) is None
