"""AbsCert's input abstraction: sound interval bounds, ONNX round trip, sound certification and the claimed gap."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from nncert.cli.train import main
from nncert.domains import box
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import network_from_torch
from nncert.domains.milp import milp_minimize
from nncert.training.abscert import BinEdges, claimed_vs_sound
from nncert.training.config import ConfigError, TrainConfig
from nncert.training.export import export_onnx
from nncert.training.models import build_model
from nncert.verifier.certify import Pipeline
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.problems import linf_instances
from nncert.verifier.spec import linf_ball
from tests.random_nets import _randomize
from tests.soundness import concrete_minimum
from tests.training.conftest import train_args

ETA, EPS = 0.2, 0.1


def _edge_points(x: torch.Tensor, eps: float, eta: float, n: int, seed: int) -> torch.Tensor:
    """Points of the eps-ball of x (clipped to [0, 1]): ends, random points, bin edges and their float neighbours."""
    g = torch.Generator().manual_seed(seed)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    edges = torch.ceil(lower / eta) * eta  # the first bin edge at or above the lower end (may lie beyond upper)
    candidates = [lower, upper, edges, torch.from_numpy(np.nextafter(edges.numpy(), -1)),
                  torch.from_numpy(np.nextafter(edges.numpy(), 2))]
    candidates += [lower + (upper - lower) * torch.rand(x.shape, generator=g) for _ in range(n)]
    points = torch.stack([torch.minimum(torch.maximum(p, lower), upper) for p in candidates], 1)
    return points.reshape(-1, *x.shape[1:])  # (N * P, *in), each sample's points together


def test_bin_edges_are_the_edges_of_each_pixels_bin():
    x = torch.tensor([[0.0, 0.05, 0.2, 0.39, 0.4, 0.999, 1.0]])
    out = BinEdges(ETA)(x)
    lower, upper = out[:, :7], out[:, 7:]
    assert torch.allclose(lower, torch.tensor([[0.0, 0.0, 0.2, 0.2, 0.4, 0.8, 0.8]]))  # 1 is in the last bin
    assert torch.allclose(upper - lower, torch.full_like(lower, ETA))
    assert bool(((lower <= x) & (x <= upper)).all())
    assert torch.allclose(BinEdges(0.3)(torch.tensor([[1.0, 0.95]]))[:, :2], torch.tensor([[0.9, 0.9]]))


def test_straight_through_gradient_reaches_the_image():
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    BinEdges(ETA)(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))  # identity through the floor, twice (both edges)


@pytest.mark.parametrize("seed", range(3))
def test_front_layer_box_holds_every_point_of_the_ball(tmp_path, seed):
    """Every point of the eps-ball, bin edges included, maps (torch and onnxruntime) into the certified box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.rand(6, 1, 3, 3, generator=g), torch.full((1, 1, 3, 3), 0.3), torch.ones(1, 1, 3, 3)])
    export_onnx(nn.Sequential(BinEdges(ETA)), tmp_path / "bins.onnx", (1, 3, 3))
    model = load_onnx(tmp_path / "bins.onnx")
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    lo, hi = box.propagate(model.network, lower, upper)[-1]  # (N, 18) each
    points = _edge_points(x, EPS, ETA, 20, seed)
    per_sample = len(points) // len(x)
    for features in (model.run(points.numpy()), BinEdges(ETA)(points).flatten(1).numpy()):
        features = torch.from_numpy(features).reshape(len(x), per_sample, -1)
        assert bool((features >= lo.unsqueeze(1) - 1e-6).all() and (features <= hi.unsqueeze(1) + 1e-6).all())
    # the bins the ball meets (at most two as eta >= 2 eps), one more only where it ends on a bin edge (x = 0.3)
    bins = ((hi - lo) / ETA).round() + 1
    ends = torch.stack([lower, upper]).double().flatten(2).repeat(1, 1, 2) / ETA  # (2, N, 18)
    last = 1 / ETA - 1  # the last bin's index: x = 1 is clamped into it
    expected = torch.floor(ends[1]).clamp(max=last) - torch.floor(ends[0]).clamp(max=last) + 1
    near_edge = ((ends - ends.round()).abs() < 1e-4).any(0)
    assert bool((bins >= expected).all()) and bool((bins[~near_edge] == expected[~near_edge]).all())
    assert bool((expected <= 2).all()) and bool((bins[:6] <= 2).all())


def test_floor_bounds_cover_rounding_at_integers():
    from nncert.domains.network import Floor

    lo, hi = Floor().bounds(torch.tensor([3.0 - 1e-6, 2.5, 0.0]), torch.tensor([3.0 - 1e-6, 2.5, 0.0]))
    assert lo.tolist() == [2.0, 2.0, 0.0] and hi.tolist() == [3.0, 2.0, 0.0]  # 3 - 1e-6 may be 3 elsewhere


@pytest.mark.parametrize("name", ["fc", "cnn3"])
def test_export_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, "mnist", widths=(16,), bin_width=ETA).eval()
    export_onnx(model, tmp_path / "m.onnx", (1, 28, 28))
    imported = load_onnx(tmp_path / "m.onnx")  # also compared with onnxruntime on random inputs
    x = _edge_points(torch.rand(4, 1, 28, 28), EPS, ETA, 2, 0)
    with torch.no_grad():
        want = model(x)
        got_ir = imported.network(x.to(imported.network.dtype)).float()
        from_torch = network_from_torch(model, (1, 28, 28))(x)
    got_ort = torch.from_numpy(imported.run(x.numpy()))
    for got in (got_ort, from_torch):
        assert torch.allclose(got, want, atol=1e-4)
    # the IR scales by 1 / eta instead of dividing: a pixel on a bin edge may round the other way
    on_edge = ((x / ETA - torch.round(x / ETA)).abs() < 1e-5).flatten(1).any(1)
    assert torch.allclose(got_ir[~on_edge], want[~on_edge], atol=1e-4)


def _abstracted_fc(seed: int) -> tuple[nn.Sequential, object]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(BinEdges(0.25), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    _randomize(model, g)
    return model.eval(), network_from_torch(model, (4,)).detach()


@pytest.mark.parametrize("seed", range(4))
def test_domains_are_sound_through_the_abstraction(seed):
    """Box <= DeepPoly <= exact MILP minimum <= sampled minimum of C y over the ball."""
    _, net = _abstracted_fc(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 4, generator=g)
    lower, upper = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    C = torch.randn(3, 2, 3, generator=g)
    box_lb = box.bound_linear(net, lower, upper, C)
    dp_lb = DeepPoly(net, lower, upper).bound(C)
    sampled = concrete_minimum(net, lower, upper, C, samples=256, seed=seed)
    exact = torch.tensor([[milp_minimize(net.to(dtype=torch.float64), lower[n].double(), upper[n].double(),
                                         C[n, k].double())[0] for k in range(2)] for n in range(3)])
    net.to(dtype=torch.float32)
    assert bool((box_lb <= dp_lb + 1e-5).all())
    assert bool((dp_lb <= exact.float() + 1e-4).all())
    assert bool((exact.float() <= sampled + 1e-4).all())


def _one_pixel_classifier() -> nn.Sequential:
    """Class 1 iff the pixel's lower bin edge is >= 0.2, class 0 otherwise (a step at 0.2)."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.1, -0.1]))
    return nn.Sequential(BinEdges(0.2), linear).eval()


def test_claimed_vs_sound_on_a_tiny_example():
    """x = 0.19: its bin [0, 0.2) is classified correctly (AbsCert claims it) but 0.2 is within eps: refuted."""
    model = _one_pixel_classifier()
    net = network_from_torch(model, (1,)).detach()
    x = torch.tensor([[0.05], [0.19], [0.3], [0.5]])
    y = torch.tensor([0, 0, 0, 1])
    with torch.no_grad():
        claimed = model(x).argmax(1) == y  # AbsCert's check: the clean bin's prediction
    assert claimed.tolist() == [True, True, False, True]
    pipeline = Pipeline(net, ["box", "deeppoly"], timeout=1e9)
    rows = [row for chunk in pipeline.run(linf_instances(x, y, 0.05, 2)) for row in chunk]
    for domain in ("box", "deeppoly"):
        status = [r.status for r in sorted((r for r in rows if r.domain == domain), key=lambda r: r.index)]
        assert status == ["certified", "falsified", "misclassified", "certified"]
        assert claimed_vs_sound(claimed, status) == {"n": 4, "claimed": 0.75, "sound": 0.5, "gap": 1, "refuted": 1}
    example = next(r.counterexample for r in rows if r.index == 1 and r.domain == "box")
    assert 0.2 <= example.item() <= 0.24  # in the next bin and in the ball


def test_claimed_vs_sound_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="2 claims but 1"):
        claimed_vs_sound(torch.tensor([True, False]), ["certified"])
    with pytest.raises(ValueError, match="misclassified"):
        claimed_vs_sound(torch.tensor([False]), ["certified"])


def test_config_defaults_and_checks_the_bin_width():
    base = {"method": "abscert", "dataset": "mnist", "model": "cnn3", "eps": 0.1, "out": "x"}
    assert TrainConfig(**base).resolved().bin_width == pytest.approx(0.2)
    assert TrainConfig(**base, bin_width=0.25).resolved().bin_width == 0.25
    assert TrainConfig(**dict(base, method="ibp")).resolved().bin_width is None
    with pytest.raises(ConfigError, match=r">= 2 \* eps"):
        TrainConfig(**base, bin_width=0.15).resolved()
    with pytest.raises(ConfigError, match="abscert only"):
        TrainConfig(**dict(base, method="sabr"), bin_width=0.2).resolved()


def test_train_abscert_end_to_end(tmp_path, fast_data):
    out = tmp_path / "abscert"
    assert main(train_args(out, fast_data, "abscert", "cnn3", 1, "--bin-width", "0.25")) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == "abscert" and config["bin_width"] == 0.25
    imported = load_onnx(out / "model.onnx")
    assert "Floor" in repr(imported.network) and imported.network.input_shape == (1, 28, 28)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["box"] <= summary["pgd"] <= summary["natural"] <= 1


def test_certify_verdicts_agree_with_milp_through_the_abstraction():
    """MN-BaB and DeepPoly never certify what the (floor-exact) MILP falsifies; every counterexample (found by the
    domains themselves: no attack) is real."""
    n_decided = 0
    for seed in range(3):
        model, net = _abstracted_fc(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(6, 4, generator=g)
        with torch.no_grad():
            y = model(x).argmax(1)
        pipeline = Pipeline(net, ["deeppoly", "mnbab", "milp"], timeout=5.0, seed=seed, attack=False)
        rows = [row for chunk in pipeline.run(linf_instances(x, y, 0.12, 3)) for row in chunk]
        by = {(r.index, r.domain): r for r in rows}
        for i in range(len(x)):
            milp = by[(i, "milp")].status
            for domain in ("deeppoly", "mnbab"):
                assert not (by[(i, domain)].status == "certified" and milp == "falsified"), (seed, i, domain)
            n_decided += milp in ("certified", "falsified")
        exact = copy.deepcopy(model).double()  # counterexamples are points of the ball as given, in float64
        for r in rows:
            if r.status == "falsified":
                lower, upper = linf_ball(x[r.index], 0.12)
                point = r.counterexample
                assert bool(((point >= lower) & (point <= upper)).all())
                assert exact(point.unsqueeze(0)).argmax(1).item() != y[r.index].item()
    assert n_decided >= 15  # MILP with the integer floor encoding decides (nearly) everything
