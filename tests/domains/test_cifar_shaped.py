"""Every domain on CIFAR-shaped networks (3x32x32 inputs normalised with CIFAR-10's statistics, conv and residual):
bounds hold at sampled points, box corners and PGD points of L-inf balls of radius 2/255 and 8/255 (clipped to
[0, 1]), and no verdict is contradicted by a concrete point or by the exact MILP."""

import time

import pytest
import torch
from torch import nn

from nncert.domains import box
from nncert.domains.alpha import AlphaDeepPoly
from nncert.domains.deeppoly import DeepPoly
from nncert.domains.from_torch import Normalize, Residual, network_from_torch
from nncert.domains.milp import milp_verify
from nncert.domains.mnbab import MNBaBConfig, mnbab_verify
from nncert.domains.network import Conv2d
from nncert.verifier.spec import robustness_spec
from tests.random_nets import _randomize
from tests.soundness import assert_node_bounds_hold, concrete_minimum

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
EPSILONS = (2 / 255, 8 / 255)
N_CLASSES = 10


def conv_model(seed: int) -> nn.Sequential:
    """Normalise, conv 3->4 4x4 stride 4 (8x8), BatchNorm, ReLU, conv 4->4 3x3 stride 2 (4x4), ReLU, linear 10."""
    model = nn.Sequential(Normalize(MEAN, STD), nn.Conv2d(3, 4, 4, 4), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, N_CLASSES))
    _randomize(model, torch.Generator().manual_seed(seed))
    return model.eval()


def residual_model(seed: int) -> nn.Sequential:
    """Normalise, conv 3->2 4x4 stride 4 (8x8), ReLU, a residual block of two 3x3 convs, ReLU, linear 10."""
    block = Residual(nn.Sequential(nn.Conv2d(2, 2, 3, 1, 1), nn.ReLU(), nn.Conv2d(2, 2, 3, 1, 1)))
    model = nn.Sequential(Normalize(MEAN, STD), nn.Conv2d(3, 2, 4, 4), nn.ReLU(), block, nn.ReLU(), nn.Flatten(),
                          nn.Linear(128, N_CLASSES))
    _randomize(model, torch.Generator().manual_seed(seed))
    return model.eval()


MODELS = {"conv": conv_model, "residual": residual_model}


def _problem(kind: str, seed: int, eps: float, n: int = 2):
    """The IR, n images' balls clipped to [0, 1] (n, 3, 32, 32) and margin rows C (n, 9, 10) of the predicted labels."""
    net = network_from_torch(MODELS[kind](seed), (3, 32, 32)).detach()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        labels = net(x).argmax(1)
    C = torch.stack([robustness_spec(int(label), N_CLASSES).C for label in labels])
    return net, (x - eps).clamp(min=0), (x + eps).clamp(max=1), C


@pytest.mark.parametrize("kind", MODELS)
def test_box_deeppoly_and_alpha_bounds_hold_and_are_ordered(kind):
    for seed, eps in enumerate(EPSILONS):
        net, lower, upper, C = _problem(kind, seed, eps)
        reference = concrete_minimum(net, lower, upper, C, samples=256, seed=seed)
        with torch.no_grad():
            boxes = box.propagate(net, lower, upper)
            bx = box.bound_linear(net, lower, upper, C, boxes)
            dp = DeepPoly(net, lower, upper)
            deeppoly = dp.bound(C)
        alpha = AlphaDeepPoly(net, lower, upper)
        optimised = alpha.optimize(C, iterations=5)
        assert_node_bounds_hold(net, dict(enumerate(boxes)), lower, upper, samples=256, seed=seed)
        assert_node_bounds_hold(net, dp.bounds, lower, upper, samples=256, seed=seed)
        assert_node_bounds_hold(net, alpha.bounds, lower, upper, samples=256, seed=seed)
        assert (bx <= reference + 1e-5).all() and (deeppoly <= reference + 1e-5).all()
        assert (optimised <= reference + 1e-5).all()
        assert (deeppoly >= bx - 1e-5).all() and (optimised >= deeppoly - 1e-5).all()


def _is_counterexample(net, C):
    return lambda xs: (net(xs) @ C.T <= 0).any(1)


@pytest.mark.parametrize("kind", MODELS)
def test_no_verdict_is_contradicted_by_a_point_or_the_exact_milp(kind):
    """Box, DeepPoly, alpha and MN-BaB certify only properties that PGD, sampling and the exact MILP cannot break;
    MN-BaB's counterexamples are real; the radii give both outcomes, so a wrong verdict would show."""
    outcomes = set()
    for eps in (0.5 / 255, 8 / 255, 32 / 255):
        net, lower, upper, C = _problem(kind, 0, eps, n=1)
        reference = concrete_minimum(net, lower, upper, C, samples=256)
        with torch.no_grad():
            margins = {"box": box.bound_linear(net, lower, upper, C), "deeppoly": DeepPoly(net, lower, upper).bound(C)}
        margins["alpha"] = AlphaDeepPoly(net, lower, upper).optimize(C, iterations=5)
        result = mnbab_verify(net, lower[0], upper[0], C[0], torch.zeros(9), torch.arange(9), time.monotonic() + 5.0,
                              _is_counterexample(net, C[0]), MNBaBConfig(intermediate_bab_share=0.1))
        certified = [d for d, m in margins.items() if bool((m > 0).all())] + (
            ["mnbab"] if result.status == "certified" else [])
        if certified:  # the MILP (seconds on 3072 inputs) only where a domain claims a proof
            exact = milp_verify(net, lower[0], upper[0], C[0], torch.zeros(9), torch.arange(9), timeout=10.0)
            assert exact.status != "falsified" and not bool((reference <= 0).any()), (certified, eps)
            outcomes.add("certified")
        if result.status == "falsified":
            x = result.counterexample
            assert (x >= lower[0]).all() and (x <= upper[0]).all()
            assert bool(_is_counterexample(net, C[0])(x[None])[0])
        if bool((reference <= 0).any()):
            outcomes.add("falsified")
    assert outcomes == {"certified", "falsified"}, outcomes


def _dense_conv_backward(self: Conv2d, A: torch.Tensor):
    """Conv2d's transpose over whole feature maps, the reference of the one on the window where A is nonzero."""
    dense = torch.nn.grad.conv2d_input((A.shape[0] * A.shape[1], *self.in_shapes[0]), self.weight, A.flatten(0, 1),
                                       self.stride, self.padding, self.dilation)
    return [dense.reshape(*A.shape[:2], *self.in_shapes[0])], (A * self.bias.view(-1, 1, 1)).flatten(2).sum(-1)


@pytest.mark.parametrize("kind", MODELS)
def test_windowed_back_substitution_equals_the_dense_one(kind, monkeypatch):
    """In float64, with one neuron per back-substitution (rows zero outside its receptive field), every node's
    DeepPoly bounds and the property's are those of transposing whole feature maps, to rounding."""
    net, lower, upper, C = _problem(kind, 0, 8 / 255, n=1)
    net, lower, upper, C = net.to(dtype=torch.float64), lower.double(), upper.double(), C.double()
    bounds = []
    for backward in (Conv2d.backward, _dense_conv_backward):
        monkeypatch.setattr(Conv2d, "backward", backward)
        dp = DeepPoly(net, lower, upper)
        dp.chunk_elements = 1  # one neuron at a time
        with torch.no_grad():
            bounds.append((dp.bound(C), dp.bounds))
    (windowed, windowed_nodes), (dense, dense_nodes) = bounds
    torch.testing.assert_close(windowed, dense, rtol=0, atol=1e-10)
    for node, (lo, hi) in dense_nodes.items():
        torch.testing.assert_close(windowed_nodes[node], (lo, hi), rtol=0, atol=1e-10)
