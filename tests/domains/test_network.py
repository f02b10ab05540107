"""Every IR op: backward is the exact transpose of the linear part, forward_abs applies |W|."""

import pytest
import torch
from torch import nn

from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh
from nncert.domains.from_torch import UnsupportedModule, network_from_torch
from nncert.domains.maxpool import MaxPool2d
from nncert.domains.network import (
    Add,
    AvgPool2d,
    Clip,
    Concat,
    Conv2d,
    ElementwiseAffine,
    Floor,
    Linear,
    Network,
    Pad,
    Reshape,
    Transpose,
    prepend,
)

torch.manual_seed(0)


def _ops():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return [
        ("linear", (5,), Linear(r(3, 5), r(3))),
        ("conv", (2, 7, 7), Conv2d(r(3, 2, 3, 3), r(3), (2, 2), (1, 1), (1, 1))),
        ("conv_even", (2, 8, 8), Conv2d(r(3, 2, 3, 3), r(3), (2, 2), (1, 1), (1, 1))),
        ("conv_dilated", (1, 9, 9), Conv2d(r(2, 1, 3, 3), r(2), (1, 1), (2, 2), (2, 2))),
        ("conv_rect", (2, 6, 9), Conv2d(r(4, 2, 2, 4), r(4), (3, 2), (0, 1), (1, 1))),
        ("conv_wide", (5, 7, 7), Conv2d(r(3, 5, 3, 3), r(3), (2, 2), (1, 1), (1, 1))),  # conv_transpose path
        ("conv_wide_rect", (4, 6, 9), Conv2d(r(2, 4, 2, 4), r(2), (3, 2), (0, 1), (2, 1))),
        ("avgpool", (2, 6, 6), AvgPool2d((2, 2), (2, 2))),
        ("avgpool_overlap", (2, 7, 7), AvgPool2d((3, 3), (2, 2), (1, 1))),
        ("affine_channel", (3, 4, 4), ElementwiseAffine(r(3, 1, 1), r(3, 1, 1))),
        ("affine_full", (6,), ElementwiseAffine(r(6), r(6))),
        ("affine_scalar", (2, 3), ElementwiseAffine(torch.tensor(-2.0), torch.tensor(0.5))),
        ("flatten", (2, 3, 3), Reshape((-1,))),
        ("reshape", (12,), Reshape((3, 2, 2))),
        ("transpose", (4, 5, 3), Transpose((2, 0, 1))),
        ("pad", (2, 4, 5), Pad((1, 2, 0, 1))),
    ]


OPS = _ops()


def _net(shape, op):
    return Network(shape, [(op, (0,))])


@pytest.mark.parametrize("name,shape,op", OPS, ids=[o[0] for o in OPS])
def test_backward_is_transpose(name, shape, op):
    net = _net(shape, op)
    x = torch.randn(3, *shape)
    A = torch.randn(3, 4, *net.output_shape)
    (A_in,), const = op.backward(A)
    zero = op.forward(torch.zeros(1, *shape))
    lhs = (A * (op.forward(x) - zero).unsqueeze(1)).flatten(2).sum(-1)
    rhs = (A_in * x.unsqueeze(1)).flatten(2).sum(-1)
    assert torch.allclose(lhs, rhs, atol=1e-4)
    assert torch.allclose(const, (A * zero.unsqueeze(1)).flatten(2).sum(-1), atol=1e-4)


CONVS = [(name, shape, op) for name, shape, op in OPS if isinstance(op, Conv2d)]


@pytest.mark.parametrize("name,shape,op", CONVS, ids=[o[0] for o in CONVS])
def test_conv_backward_on_the_nonzero_window_equals_the_dense_transpose(name, shape, op):
    """Conv2d.backward transposes only the window where A is nonzero: in float64 it equals the full adjoint
    to rounding, for windows anywhere (on the borders, one entry, the whole map, none) and NaN stays."""
    conv = Conv2d(op.weight.double(), op.bias.double(), op.stride, op.padding, op.dilation)
    c, h, w = _net(shape, conv).output_shape
    g = torch.Generator().manual_seed(0)
    corners = [(0, h, 0, w), (0, 1, 0, 1), (h - 1, h, w - 1, w), (0, h, w - 1, w), (0, 0, 0, 0)]
    spans = [sorted(torch.randint(0, n + 1, (2,), generator=g).tolist()) for _ in range(10) for n in (h, w)]
    for top, bottom, left, right in corners + [(*a, *b) for a, b in zip(spans[::2], spans[1::2])]:
        A = torch.zeros(2, 3, c, h, w, dtype=torch.float64)
        A[..., top:bottom, left:right] = torch.randn(2, 3, c, bottom - top, right - left, generator=g,
                                                     dtype=torch.float64)
        (A_in,), const = conv.backward(A)
        dense = torch.nn.grad.conv2d_input((6, *shape), conv.weight, A.reshape(6, c, h, w), conv.stride,
                                           conv.padding, conv.dilation)
        torch.testing.assert_close(A_in, dense.reshape(2, 3, *shape), rtol=0, atol=1e-12)
        torch.testing.assert_close(const, (A * conv.bias.view(-1, 1, 1)).flatten(2).sum(-1), rtol=0, atol=1e-12)
    A = torch.zeros(1, 1, c, h, w, dtype=torch.float64)
    A[..., h - 1, 0] = torch.nan
    (A_in,), _ = conv.backward(A)
    assert A_in.isnan().any()


@pytest.mark.parametrize("name,shape,op", OPS, ids=[o[0] for o in OPS])
def test_forward_abs_applies_abs_weights(name, shape, op):
    net = _net(shape, op)
    jac = torch.autograd.functional.jacobian(lambda v: op.forward(v.unsqueeze(0))[0], torch.zeros(shape))
    dense = jac.reshape(int(torch.tensor(net.output_shape).prod()), -1)
    r = torch.rand(2, *shape)
    expected = (r.flatten(1) @ dense.abs().T).reshape(2, *net.output_shape)
    assert torch.allclose(op.forward_abs(r), expected, atol=1e-5)


def test_add_backward_sends_coefficients_to_both_branches():
    net = Network((3,), [(Linear(torch.eye(3), torch.zeros(3)), (0,)), (Add(), (0, 1))])
    x = torch.randn(2, 3)
    assert torch.allclose(net(x), 2 * x)
    (a, b), const = net.nodes[2].op.backward(torch.ones(2, 1, 3))
    assert torch.equal(a, b) and torch.all(const == 0)


@pytest.mark.parametrize("axis,shapes", [(0, [(2, 3, 3), (1, 3, 3)]), (1, [(2, 3), (2, 4), (2, 1)])])
def test_concat_backward_is_transpose(axis, shapes):
    x = [torch.randn(3, *s) for s in shapes]
    op = Concat(axis, len(shapes))
    op.bind(shapes)
    y = op.forward(*x)
    assert torch.equal(op.forward_abs(*[v.abs() for v in x]), y.abs())
    A = torch.randn(3, 4, *y.shape[1:])
    parts, const = op.backward(A)
    lhs = (A * y.unsqueeze(1)).flatten(2).sum(-1)
    rhs = sum((A_j * x_j.unsqueeze(1)).flatten(2).sum(-1) for A_j, x_j in zip(parts, x))
    assert torch.allclose(lhs, rhs, atol=1e-5) and torch.all(const == 0)


def test_floor_is_exact_with_identity_gradient_and_monotone_bounds():
    x = torch.tensor([-1.5, -0.0, 0.3, 2.0, 2.9999], requires_grad=True)
    y = Floor().forward(x)
    assert y.tolist() == [-2.0, 0.0, 0.0, 2.0, 2.0]
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))
    lo, hi = Floor().bounds(torch.tensor([-1.5, 0.0, 0.3]), torch.tensor([0.7, 0.0, 2.5]))
    assert lo.tolist() == [-2.0, 0.0, 0.0] and hi.tolist() == [0.0, 0.0, 2.0]


def test_clip_is_exact_with_identity_gradient_and_monotone_bounds():
    x = torch.tensor([-3.0, 0.5, 4.0], requires_grad=True)
    y = Clip(-1.0, 2.0).forward(x)
    assert y.tolist() == [-1.0, 0.5, 2.0]
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    lo, hi = Clip(None, 2.0).bounds(torch.tensor([-3.0, 0.5]), torch.tensor([1.0, 4.0]))
    assert lo.tolist() == [-3.0, 0.5] and hi.tolist() == [1.0, 2.0]


def test_invalid_inputs_rejected():
    with pytest.raises(ValueError, match="invalid inputs"):
        Network((3,), [(Add(), (0, 5))])


def test_prepend_composes():
    net = Network.chain((4,), [Linear(torch.randn(2, 4), torch.randn(2))])
    composed = prepend([ElementwiseAffine(torch.tensor(0.5), torch.tensor(1.0)), Reshape((4,))], net, (2, 2))
    x = torch.rand(5, 2, 2)
    assert torch.allclose(composed(x), net(x.reshape(5, 4) * 0.5 + 1.0), atol=1e-6)
    assert len(composed.nodes) == 4


def test_from_torch_converts_maxpool_and_smooth_activations():
    """nn.MaxPool2d (padding, stride, dilation), LeakyReLU, Tanh and Sigmoid become IR ops that compute the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(0.2), nn.MaxPool2d(3, stride=2, padding=1, dilation=1),
                          nn.Tanh(), nn.MaxPool2d(2, dilation=2), nn.Flatten(), nn.Sigmoid()).eval()
    net = network_from_torch(model, (1, 11, 11))
    assert [type(n.op) for n in net.nodes[1:]] == [Conv2d, LeakyReLU, MaxPool2d, Tanh, MaxPool2d, Reshape, Sigmoid]
    x = torch.randn(5, 1, 11, 11)
    assert torch.allclose(net(x), model(x), atol=1e-6)


@pytest.mark.parametrize("module", [nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, return_indices=True),
                                    nn.LeakyReLU(1.5)])
def test_from_torch_rejects_unsupported_configurations(module):
    with pytest.raises(UnsupportedModule):
        network_from_torch(nn.Sequential(module), (1, 5, 5))
