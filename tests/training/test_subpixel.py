"""The sub-pixel input gradient of a strided convolution equals the transposed convolution's, and the mode
applies it only where it is meant to (strided, few input channels), leaving the parameters without gradient."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncert.training.models import build_model
from nncert.training.subpixel import SubpixelInputGradients, conv_transpose_subpixel


@pytest.mark.parametrize("c_in, size, kernel, stride, padding", [
    (3, (32, 32), (5, 5), 2, (1, 1)),  # cnn3's first layer on CIFAR-10
    (1, (28, 28), (5, 5), 2, (1, 1)),  # and on MNIST
    (1, (13, 13), (4, 4), 2, (0, 0)),  # the last input row lies past every window: zero gradient there
    (2, (11, 14), (3, 2), 3, (2, 1)),  # rectangular input and kernel, stride 3, kernel smaller than the stride
    (4, (9, 9), (7, 7), 2, (3, 3)),
])
def test_subpixel_gradient_is_the_transposed_convolution(c_in, size, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, c_in, *kernel, generator=g, dtype=torch.float64)
    x = torch.rand(5, c_in, *size, generator=g, dtype=torch.float64)
    out = F.conv2d(x, weight, None, stride, padding)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected = torch.nn.grad.conv2d_input(x.shape, weight, grad, stride, padding)
    got = conv_transpose_subpixel(grad, weight, stride, padding, size)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_input_gradient_of_a_model_is_unchanged_and_parameters_get_none(dataset):
    torch.manual_seed(0)
    model = build_model("cnn3", dataset).double()
    shape = (3, 32, 32) if dataset == "cifar10" else (1, 28, 28)
    x = torch.rand(4, *shape, dtype=torch.float64)
    y = torch.tensor([0, 3, 5, 9])
    grads = []
    for mode in (None, SubpixelInputGradients()):
        z = x.clone().requires_grad_(True)
        with mode or torch.enable_grad():
            loss = F.cross_entropy(model(z), y)
        grads.append(torch.autograd.grad(loss, z)[0])
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    with SubpixelInputGradients():
        out = model(x.clone().requires_grad_(True)).sum()
    out.backward()
    first, second = (m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is None and first.bias.grad is None  # the sub-pixel path: input gradient only
    assert second.weight.grad is not None  # 16 input channels: the ordinary convolution, unchanged


def test_calls_outside_the_sub_pixel_path_are_ordinary_convolutions():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    with SubpixelInputGradients():
        for kwargs in ({"stride": 1}, {"stride": 2, "dilation": 2}, {"stride": (2, 1)}, {"padding": "same"}):
            out = F.conv2d(x, weight, **kwargs)
            assert out.grad_fn.name() == "ConvolutionBackward0", kwargs
        assert F.conv2d(x, weight, stride=2).grad_fn.name() != "ConvolutionBackward0"
