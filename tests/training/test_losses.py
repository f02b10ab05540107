"""The Box cross-entropy: exact IBP at lambda = 1, an upper bound of the CE of every point of the ball; MTL-IBP's
convex combination of the adversarial and the IBP loss."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncert.domains import box
from nncert.domains.from_torch import Residual, network_from_torch
from nncert.training.losses import box_cross_entropy, margin_lower_bounds, margin_matrix
from nncert.training.methods import BatchSetting, method_loss
from nncert.training.models import build_model, ibp_init
from nncert.training.regions import linf_box
from tests.random_nets import ACTIVATION_KINDS, KINDS, random_network


def _model(name="cnn3", seed=0):
    torch.manual_seed(seed)
    model = build_model(name, "mnist", widths=(32, 32))
    ibp_init(model)
    return model


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_margin_matrix_rows():
    C = margin_matrix(torch.tensor([2, 0]), 4)
    assert C.shape == (2, 4, 4)
    assert torch.equal(C[0, 1], torch.tensor([0.0, -1.0, 1.0, 0.0]))
    assert torch.equal(C[0, 2], torch.zeros(4))  # the true class row
    assert torch.equal(C[1, 3], torch.tensor([1.0, 0.0, 0.0, -1.0]))


def test_lambda_one_is_exactly_ibp():
    x, y = _batch()
    setting = BatchSetting(eps=0.05, natural=False, reg_weight=0.3)
    losses = []
    for method in ("ibp", "sabr"):
        model = _model("cnn5")  # with BatchNorm: batch statistics in the propagation
        model.train()
        losses.append(method_loss(method, model, x, y, setting, lam=1.0, pgd_steps=4, reg_tol=0.5,
                                  mtl_alpha=0.0))
    assert losses[0].keys() == losses[1].keys() == {"ce", "reg"}
    for key in losses[0]:
        assert torch.equal(losses[0][key], losses[1][key])


def test_ibp_loss_bounds_the_cross_entropy_of_sampled_points():
    for name in ("cnn3", "fc", "cnn5"):
        model = _model(name).eval()
        x, y = _batch(seed=1)
        eps = 0.05
        lower, upper = linf_box(x, eps)
        net = network_from_torch(model, (1, 28, 28))
        with torch.no_grad():
            margins = margin_lower_bounds(net, lower, upper, y)
            robust = F.cross_entropy(-margins, y, reduction="none")
            g = torch.Generator().manual_seed(2)
            for _ in range(20):
                point = lower + (upper - lower) * torch.rand(x.shape, generator=g)
                corner = torch.where(torch.rand(x.shape, generator=g) < 0.5, lower, upper)
                for z in (point, corner):
                    assert (F.cross_entropy(model(z), y, reduction="none") <= robust + 1e-5).all()
            assert torch.isclose(box_cross_entropy(margins, y), robust.mean())
            assert (margins.gather(1, y[:, None]) == 0).all()


@pytest.mark.parametrize("method", ["sabr", "mtl-ibp"])
def test_certified_loss_is_differentiable(method):
    model = _model("cnn5").train()
    x, y = _batch()
    terms = method_loss(method, model, x, y, BatchSetting(0.05, False, 0.3), lam=0.4, pgd_steps=2, reg_tol=0.5,
                        mtl_alpha=0.5)
    sum(terms.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _loss(method, alpha, seed=3):
    """The method's loss terms on a fixed batch of a BatchNorm model; the attack's random start seeded."""
    model = _model("cnn5").train()
    x, y = _batch(seed=4)
    torch.manual_seed(seed)
    return method_loss(method, model, x, y, BatchSetting(0.05, False, 0.3), lam=0.4, pgd_steps=3, reg_tol=0.5,
                       mtl_alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mtl_ibp_is_the_convex_combination_of_the_pgd_and_ibp_losses(alpha):
    adversarial, ibp = _loss("pgd", None)["ce"], _loss("ibp", None)
    mtl = _loss("mtl-ibp", alpha)
    assert adversarial > 0 and ibp["ce"] > adversarial  # the two ends differ, so alpha's side is checked
    assert torch.allclose(mtl["ce"], (1 - alpha) * adversarial + alpha * ibp["ce"], rtol=1e-5)
    assert torch.equal(mtl["reg"], ibp["reg"])  # Shi et al.'s warm-up regularisers as for IBP


def test_margin_bounds_of_a_model_without_relu_are_exact():
    """Nothing stops the back-substitution: the input's coefficients are concretised, giving the exact minimum."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    x, y = _batch()
    lower, upper = linf_box(x, 0.05)
    with torch.no_grad():
        margins = margin_lower_bounds(network_from_torch(model, (1, 28, 28)), lower, upper, y)
        A = margin_matrix(y, 10) @ model[1].weight  # (N, K, 784)
        exact = (A @ x.flatten(1)[..., None]).squeeze(-1) + margin_matrix(y, 10) @ model[1].bias
        exact -= (A.abs() @ ((upper - lower) / 2).flatten(1)[..., None]).squeeze(-1)
        exact += (A @ ((upper + lower) / 2 - x).flatten(1)[..., None]).squeeze(-1)
    assert torch.allclose(margins, exact, atol=1e-4)  # skipping the input would leave C b


def _skip_to_output_model() -> nn.Module:
    """A residual block whose shortcut is an affine map of the input straight into the output: the
    back-substitution stops at the ReLU on one path and reaches the input on the other."""
    torch.manual_seed(5)
    return nn.Sequential(Residual(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), nn.Linear(4, 3)))


@pytest.mark.parametrize("kind", [*KINDS, *ACTIVATION_KINDS, "skip"])
def test_margin_bounds_equal_the_per_sample_fold(kind):
    """Folding C once per class gives Box's bounds with C folded once per sample (domains.box.bound_linear), up to
    float rounding, on every network shape and on every kind of node where the back-substitution stops."""
    model, net = (_skip_to_output_model(), None) if kind == "skip" else random_network(0, kind)
    net = net or network_from_torch(model, (4,))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, *net.input_shape, generator=g)
    y = torch.randint(0, net.output_shape[0], (9,), generator=g)
    lower, upper = x - 0.1, x + 0.1
    with torch.no_grad():
        per_class = margin_lower_bounds(net, lower, upper, y)
        per_sample = box.bound_linear(net, lower, upper, margin_matrix(y, net.output_shape[0]))
    assert per_class.shape == (9, net.output_shape[0])
    assert (per_class.gather(1, y[:, None]) == 0).all()
    assert torch.allclose(per_class, per_sample, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(per_class, per_class.roll(1, 0))  # the samples' bounds differ: the test can fail


def test_margin_bounds_keep_the_gradient_of_the_per_sample_fold():
    """The parameters' gradient of the IBP loss is that of the per-sample fold (training follows the same loss)."""
    model = _model("cnn5").train()
    x, y = _batch(seed=6)
    lower, upper = linf_box(x, 0.05)
    grads = []
    for margins in (lambda net: margin_lower_bounds(net, lower, upper, y),
                    lambda net: box.bound_linear(net, lower, upper, margin_matrix(y, 10))):
        model.zero_grad()
        box_cross_entropy(margins(network_from_torch(model.eval(), (1, 28, 28))), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
