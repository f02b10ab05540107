"""Architectures: shapes, BatchNorm placement, the IBP initialisation, and their IR conversion."""

import math

import pytest
import torch
from torch import nn

from nncert.domains.from_torch import Normalize, network_from_torch
from nncert.training.models import build_model, ibp_init


@pytest.mark.parametrize("name", ["fc", "cnn3", "cnn5", "cnn7"])
@pytest.mark.parametrize("dataset,shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_models_take_images_and_match_their_ir(name, dataset, shape):
    torch.manual_seed(0)
    model = build_model(name, dataset).eval()
    assert isinstance(model[0], Normalize)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        assert torch.allclose(network_from_torch(model, shape)(x), logits, atol=1e-5)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == (name in ("cnn5", "cnn7"))


def test_cnn7_layout():
    convs = [m for m in build_model("cnn7", "cifar10") if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1]
    linears = [m for m in build_model("cnn7", "cifar10") if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(128 * 16 * 16, 512), (512, 10)]


def test_fc_widths():
    linears = [m for m in build_model("fc", "mnist", widths=(50, 20)) if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(784, 50), (50, 20), (20, 10)]


def test_ibp_init_scales_hidden_weights_by_fan_in():
    torch.manual_seed(0)
    model = build_model("cnn5", "mnist")
    last = model[-1].weight.clone()
    ibp_init(model)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    for layer in layers[:-1]:
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
    assert torch.equal(model[-1].weight, last)
