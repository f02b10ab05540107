"""The Python API: bounds hold at concrete points, and certify returns the command's records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nncert.cli.certify import demo_files, main
from nncert.domains.from_torch import network_from_torch
from nncert.verifier.api import BOUND_METHODS, as_model, bounds, certify, certify_vnnlib, linf_ball, robustness_matrix
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.spec import SpecError
from tests.random_nets import KINDS, random_network, random_region
from tests.soundness import box_points, concrete_minimum

# the fields that do not depend on timing
RECORD = ("index", "label", "predicted", "domain", "status")


@pytest.mark.parametrize("method", list(BOUND_METHODS))
@pytest.mark.parametrize("kind", KINDS)
def test_bounds_contain_c_y_at_sampled_points(kind, method):
    model, net = random_network(3, kind)
    lower, upper, C = random_region(net, seed=4)
    lb, ub = bounds(model, lower, upper, C, method=method)
    assert lb.shape == ub.shape == C.shape[:2]
    assert (lb <= concrete_minimum(net, lower, upper, C) + 1e-5).all()
    assert (ub >= -concrete_minimum(net, lower, upper, -C) - 1e-5).all()


@pytest.mark.parametrize("method", list(BOUND_METHODS))
def test_bounds_of_the_outputs_hold_for_an_onnx_model(method):
    onnx_model = load_onnx(demo_files()[0])
    x = torch.from_numpy(np.load(demo_files()[1])["x"][:2])
    lower, upper = linf_ball(x, 0.05)
    lb, ub = bounds(onnx_model, lower, upper, method=method)  # images (N, 1, 28, 28) for a model of them
    points = box_points(lower, upper, 64, torch.Generator().manual_seed(0))  # (N, P, 1, 28, 28)
    y = torch.from_numpy(onnx_model.run(points.flatten(0, 1).numpy())).reshape(2, -1, 10)
    assert lb.shape == ub.shape == (2, 10)
    assert (y >= lb.unsqueeze(1) - 1e-4).all() and (y <= ub.unsqueeze(1) + 1e-4).all()


def test_alpha_is_at_least_as_tight_as_deeppoly_and_box_is_loosest():
    model, net = random_network(5, "fc")
    lower, upper, C = random_region(net, seed=6, eps=0.2)
    width = {m: torch.sub(*reversed(bounds(model, lower, upper, C, method=m))) for m in BOUND_METHODS}
    assert (width["alpha"] <= width["deeppoly"] + 1e-5).all() and (width["deeppoly"] <= width["box"] + 1e-5).all()
    assert (width["alpha"] < width["box"] - 1e-3).any()  # the relaxations do narrow something here


@pytest.mark.parametrize("method", ["box", "deeppoly"])
def test_bounds_are_differentiable_in_the_parameters_and_the_box(method):
    model, _ = random_network(7, "conv")
    x = torch.rand(2, 1, 6, 6)
    lower, upper = linf_ball(x, 0.05)
    lower.requires_grad_(True)
    lb, _ = bounds(model, lower, upper, robustness_matrix(torch.tensor([0, 2]), 3), method=method)
    lb.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.parameters()) and lower.grad.abs().sum() > 0


def test_robustness_matrix_rows_are_label_minus_others():
    C = robustness_matrix(torch.tensor([2, 0]), 3)
    y = torch.tensor([[1.0, 2.0, 5.0], [4.0, 3.0, -1.0]])
    assert torch.equal(torch.einsum("nko,no->nk", C, y), torch.tensor([[4.0, 3.0], [1.0, 5.0]]))


def test_bad_arguments_raise_spec_errors():
    model, _ = random_network(0, "fc")
    with pytest.raises(SpecError, match="unknown method"):
        bounds(model, torch.zeros(1, 4), torch.ones(1, 4), method="crown")
    with pytest.raises(SpecError, match="input_shape"):
        as_model(model)
    with pytest.raises(SpecError, match="expected an ONNX path"):
        as_model(42)


def test_certify_records_match_the_command(tmp_path, capsys):
    model_path, samples = demo_files()
    assert main([str(model_path), "--inputs", str(samples), "--num", "8", "--eps", "0.1", "--domain",
                 "box,deeppoly,mnbab", "--timeout", "30", "--threads", "1", "--json", str(tmp_path / "nncert.cli.json"),
                 "--quiet"]) == 0
    cli = json.loads((tmp_path / "nncert.cli.json").read_text())
    data = np.load(samples)
    results = certify(model_path, data["x"][:8], data["y"][:8], 0.1, ("box", "deeppoly", "mnbab"), timeout=30,
                      json_path=tmp_path / "api.json")
    records = [tuple(row[key] for key in RECORD) for row in results.rows]
    assert records == [tuple(row[key] for key in RECORD) for row in cli["results"]]
    assert {s["certified"] for s in results.summary.values()} != {0}
    assert json.loads((tmp_path / "api.json").read_text())["results"] == results.rows


def test_certify_a_torch_module_with_normalisation_in_front():
    model, _ = random_network(8, "fc")
    inner = model[1:]  # without its Normalize(0.3, 0.7): given to certify as mean / std instead
    x = torch.rand(6, 4)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3
    whole = certify(model, x, y, 0.02, ("deeppoly", "mnbab"), timeout=30)
    split = certify(inner, x, y, 0.02, ("deeppoly", "mnbab"), timeout=30, mean=0.3, std=0.7)
    assert [r["status"] for r in whole.rows] == [r["status"] for r in split.rows]
    assert [r["status"] for r in whole.rows if r["index"] == 0] == ["misclassified"] * 2
    assert {r["status"] for r in whole.rows if r["index"] > 0} <= {"certified", "falsified"}  # complete on it


def test_certify_vnnlib_matches_the_command(tmp_path, capsys):
    torch.manual_seed(1)
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(module, torch.zeros(1, 6), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    centre = torch.full((6,), 0.5)
    label = int(module(centre[None]).argmax())
    lines = [f"(declare-const X_{i} Real)" for i in range(6)] + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    lines += [f"(assert (>= X_{i} 0.49))\n(assert (<= X_{i} 0.51))" for i in range(6)]
    lines.append(f"(assert (>= Y_{1 - label} Y_{label}))")
    spec = tmp_path / "p.vnnlib"
    spec.write_text("\n".join(lines))
    assert main([str(path), "--vnnlib", str(spec), "--domain", "box,mnbab", "--threads", "1", "--json",
                 str(tmp_path / "nncert.cli.json"), "--quiet"]) == 0
    cli = [tuple(r[k] for k in RECORD) for r in json.loads((tmp_path / "nncert.cli.json").read_text())["results"]]
    for model, shape in ((path, None), (module, (6,)), (network_from_torch(module, (6,)), None)):
        rows = certify_vnnlib(model, spec, ("box", "mnbab"), input_shape=shape).rows
        assert [tuple(r[k] for k in RECORD) for r in rows] == cli
    assert cli[-1][-1] == "certified"
