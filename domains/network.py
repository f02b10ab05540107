"""The network IR: a DAG of a few op kinds, shared by every abstract domain.

A :class:`Network` is a list of :class:`Node` in topological order. Node 0 is the
input; the last node is the output. Every non-ReLU op is affine in its inputs
and offers three primitives, all batched over a leading dimension:

- ``forward(*x)``: the op itself, ``x`` of shape (N, *in_shape).
- ``forward_abs(*r)``: the linear part with absolute-valued coefficients and no
  bias, used to propagate Box radii: ``|W| r``.
- ``backward(A)``: transposes the linear part for back-substitution. ``A`` has
  shape (N, K, *out_shape) and stands for the linear function ``A . y``; the
  result is one coefficient tensor (N, K, *in_shape) per input and the constant
  (N, K) contributed by the bias: ``A . (W x + b) = (W^T A) . x + A . b``.

Monotone ops (:class:`Floor` and :class:`Clip`, the quantiser of input
abstractions such as AbsCert's bins) are the exception: non-decreasing,
coordinate-wise and not affine. Every domain bounds them by intervals only
(``bounds``), and back-substitution stops at them and concretises with those
bounds, as at an input; ``forward`` is exact, with a straight-through gradient
for attacks.

Convolutions and pooling use conv / conv_transpose, never dense matrices. A new
ONNX op means one new class here; a new domain never touches this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

# Conv2d.backward on inputs with this few channels (e.g. images) uses col2im, several times faster than
# the CPU's conv_transpose there; wider inputs use conv_transpose.
FOLD_MAX_IN_CHANNELS = 3


def _flat_k(A: Tensor, n_batch_dims: int = 2) -> tuple[Tensor, tuple[int, ...]]:
    """Merge the leading (N, K) dims of A for ops that take one batch dim."""
    lead = A.shape[:n_batch_dims]
    return A.reshape(-1, *A.shape[n_batch_dims:]), lead


def support(A: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows [top, bottom) and columns [left, right) of the smallest window outside which every map of A
    (..., H, W) is zero; (0, 0) for both if A is zero everywhere."""
    nonzero = (A != 0).flatten(0, -3).any(0)  # (H, W)
    spans = []
    for hit in (nonzero.any(1), nonzero.any(0)):
        at = torch.nonzero(hit).flatten()
        spans.append((int(at[0]), int(at[-1]) + 1) if len(at) else (0, 0))
    return spans[0], spans[1]


def _output_padding(op: Op, kernel, dilation) -> tuple[int, int]:
    """conv_transpose can produce several input sizes from one output size; pick the bound one."""
    sizes = zip(op.in_shapes[0][1:], op.out_shape[1:], kernel, op.stride, op.padding, dilation)
    return tuple(n_in - ((n_out - 1) * s - 2 * p + d * (k - 1) + 1) for n_in, n_out, k, s, p, d in sizes)


class Op:
    """Base class: an op knows the shapes of its inputs once bound to a network."""

    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    n_inputs = 1
    coordinatewise = False  # each output coordinate depends on at most one input coordinate

    def bind(self, in_shapes: list[tuple[int, ...]]) -> None:
        self.in_shapes = [tuple(s) for s in in_shapes]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}

    def to(self, device=None, dtype=None) -> None:
        for name, t in self.tensors().items():
            setattr(self, name, t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def detach(self) -> None:
        for name, t in self.tensors().items():
            setattr(self, name, t.detach())

    def __repr__(self) -> str:
        return type(self).__name__


@dataclass(repr=False)
class Input(Op):
    n_inputs = 0


@dataclass(repr=False)
class ReLU(Op):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


@dataclass(repr=False)
class Linear(Op):
    """y = W x + b over the last axis of x (*lead, in) -> (*lead, out). weight: (out, in), bias: (out,)."""

    weight: Tensor
    bias: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        # A (N, K, *lead, out): the bias enters once per position of the leading axes
        const = A @ self.bias
        return [A @ self.weight], const.flatten(2).sum(-1) if const.dim() > 2 else const

    def __repr__(self) -> str:
        return f"Linear({self.weight.shape[1]}->{self.weight.shape[0]})"


@dataclass(repr=False)
class Conv2d(Op):
    """2-D convolution (groups=1). weight: (C_out, C_in, kh, kw), bias: (C_out,)."""

    weight: Tensor
    bias: Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding, self.dilation)

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        """W^T A on the region where A is nonzero only: the rows of an intermediate neuron (or of a few
        neighbours) are zero outside its receptive field, and transposing whole feature maps took 35% of a
        CIFAR-10 ResNet's time (benchmarks/results/conv_profile.md)."""
        (top, bottom), (left, right) = support(A)
        const = torch.einsum("nkchw,c->nk", A, self.bias)
        if top == bottom:  # A is zero
            return [A.new_zeros(*A.shape[:2], *self.in_shapes[0])], const
        kernel = self.weight.shape[2:]
        if (bottom - top, right - left) == tuple(A.shape[-2:]):  # the whole map: no window to place
            flat, lead = _flat_k(A)
            out = self._transposed(flat, self.in_shapes[0][1:], self.padding,
                                   _output_padding(self, kernel, self.dilation))
            return [out.reshape(*lead, *self.in_shapes[0])], const
        flat, lead = _flat_k(A[..., top:bottom, left:right])
        # the input rows and columns the window reaches...
        size = [(n - 1) * s + d * (k - 1) + 1
                for n, s, d, k in zip(flat.shape[-2:], self.stride, self.dilation, kernel)]
        out = self._transposed(flat, size, (0, 0), (0, 0))
        # ... from (top, left) * stride - padding on; what falls on the zero padding is dropped
        origin = (top * self.stride[0] - self.padding[0], left * self.stride[1] - self.padding[1])
        inside = [slice(max(o, 0), min(o + n, m)) for o, n, m in zip(origin, size, self.in_shapes[0][1:])]
        placed = A.new_zeros(flat.shape[0], *self.in_shapes[0])
        if all(part.start < part.stop for part in inside):
            placed[..., inside[0], inside[1]] = out[..., slice(inside[0].start - origin[0], inside[0].stop - origin[0]),
                                                    slice(inside[1].start - origin[1], inside[1].stop - origin[1])]
        return [placed.reshape(*lead, *self.in_shapes[0])], const

    def _transposed(self, flat: Tensor, size, padding, output_padding) -> Tensor:
        """W^T of coefficient maps (B, C_out, h, w) onto input maps (B, C_in, *size)."""
        c_out, c_in, kh, kw = self.weight.shape
        if c_in <= FOLD_MAX_IN_CHANNELS:  # as col2im of the patch coefficients
            cols = torch.matmul(self.weight.reshape(c_out, -1).t(), flat.flatten(2))  # (B, c_in*kh*kw, h*w)
            return F.fold(cols, size, (kh, kw), self.dilation, padding, self.stride)
        return F.conv_transpose2d(flat, self.weight, None, self.stride, padding, output_padding, 1, self.dilation)

    def __repr__(self) -> str:
        c_out, c_in, kh, kw = self.weight.shape
        return f"Conv2d({c_in}->{c_out}, {kh}x{kw}, stride={self.stride}, padding={self.padding})"


@dataclass(repr=False)
class AvgPool2d(Op):
    """Average pooling (zero padding counted, as ONNX count_include_pad=0 is rejected at import)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        channels = self.in_shapes[0][0]
        weight = A.new_full((channels, 1, *self.kernel), 1.0 / math.prod(self.kernel))
        flat, lead = _flat_k(A)
        padding = _output_padding(self, self.kernel, (1, 1))
        out = F.conv_transpose2d(flat, weight, None, self.stride, self.padding, padding, channels)
        return [out.reshape(*lead, *self.in_shapes[0])], A.new_zeros(lead)

    def __repr__(self) -> str:
        return f"AvgPool2d({self.kernel}, stride={self.stride})"


@dataclass(repr=False)
class ElementwiseAffine(Op):
    """y = x * scale + shift, scale and shift broadcastable to the input shape.

    Covers input normalisation ((x - mean) / std), BatchNorm in eval mode and
    ONNX Mul/Add/Sub/Div by constants.
    """

    coordinatewise = True

    scale: Tensor
    shift: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        shift = self.shift.expand(self.in_shapes[0])
        return [A * self.scale], (A * shift).flatten(2).sum(-1)

    def __repr__(self) -> str:
        return f"ElementwiseAffine({tuple(self.scale.shape)})"


@dataclass(repr=False)
class Reshape(Op):
    """Flatten / Reshape of the per-sample shape (one entry may be -1)."""

    coordinatewise = True

    shape: tuple[int, ...]

    def bind(self, in_shapes: list[tuple[int, ...]]) -> None:
        super().bind(in_shapes)
        self.shape = tuple(torch.empty(in_shapes[0], device="meta").reshape(self.shape).shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        return [A.reshape(*A.shape[:2], *self.in_shapes[0])], A.new_zeros(A.shape[:2])

    def __repr__(self) -> str:
        return f"Reshape({self.shape})"


@dataclass(repr=False)
class Transpose(Op):
    """Permutation of the per-sample dims (e.g. NHWC inputs): perm indexes them from 0."""

    coordinatewise = True

    perm: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *(p + 1 for p in self.perm))

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        inverse = [self.perm.index(i) for i in range(len(self.perm))]
        return [A.permute(0, 1, *(p + 2 for p in inverse))], A.new_zeros(A.shape[:2])

    def __repr__(self) -> str:
        return f"Transpose{self.perm}"


@dataclass(repr=False)
class Pad(Op):
    """Constant-zero padding of the last two dims: pads = (left, right, top, bottom)."""

    coordinatewise = True

    pads: tuple[int, int, int, int]

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads)

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        left, right, top, bottom = self.pads
        h, w = A.shape[-2:]
        return [A[..., top:h - bottom, left:w - right]], A.new_zeros(A.shape[:2])

    def __repr__(self) -> str:
        return f"Pad{self.pads}"


@dataclass(repr=False)
class Add(Op):
    """Sum of two branches of the same shape (residual connections)."""

    n_inputs = 2

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        return [A, A], A.new_zeros(A.shape[:2])


@dataclass(repr=False)
class Concat(Op):
    """Concatenation of branches along the per-sample axis ``axis`` (e.g. channels: 0)."""

    coordinatewise = True

    axis: int = 0
    n_inputs: int = 2

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, self.axis + 1)

    forward_abs = forward

    def backward(self, A: Tensor) -> tuple[list[Tensor], Tensor]:
        sizes = [shape[self.axis] for shape in self.in_shapes]
        return list(A.split(sizes, self.axis + 2)), A.new_zeros(A.shape[:2])

    def __repr__(self) -> str:
        return f"Concat(axis={self.axis})"


class Relaxation:
    """Linear bounds of an activation's output by its input, for input bounds fixed when it was made."""

    def backward(self, A: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``A . y`` as ``A_x . x + const``: A (N, K, *out) -> (A_x (N, K, *in), const (N, K))."""
        raise NotImplementedError


class Activation(Op):
    """A non-affine op other than ReLU (Sigmoid, Tanh, LeakyReLU, MaxPool): domains dispatch on these methods.

    - ``bounds(lower, upper)``: interval image of input bounds (N, *in) -> (N, *out).
    - ``relax(lower, upper, params)``: a :class:`Relaxation`, sound on the input box for every
      ``params`` (None: the default choice; else (N, K, *in), one per row of the bound being computed).
    - ``loose(lower, upper)``: (N, *in) bool, the inputs whose bounds the relaxation is not exact for
      (tighter bounds of them tighten it).
    - ``init_params(lower, upper)`` / ``project(params)``: optimisable parameters (N, *in) of the
      relaxation (``None`` when it has none) and their projection onto the set it is sound for.
    """

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def relax(self, lower: Tensor, upper: Tensor, params: Tensor | None = None) -> Relaxation:
        raise NotImplementedError

    def loose(self, lower: Tensor, upper: Tensor) -> Tensor:
        return upper > lower

    def init_params(self, lower: Tensor, upper: Tensor) -> Tensor | None:
        return None

    def project(self, params: Tensor) -> Tensor:
        return params


class Monotone(Op):
    """A non-decreasing coordinate-wise op that is not affine: domains bound it by intervals only."""

    coordinatewise = True

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Interval image of [lower, upper] (N, *s): (f(lower), f(upper)) for a non-decreasing f."""
        return self.forward(lower), self.forward(upper)


class _StraightThroughFloor(torch.autograd.Function):
    """floor(x) exactly, with the identity as gradient (floor's own is zero almost everywhere)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _StraightThroughClamp(torch.autograd.Function):
    """clamp(x, low, high) exactly, with the identity as gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float | None, high: float | None) -> Tensor:
        return torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


def straight_through_floor(x: Tensor) -> Tensor:
    """floor(x), differentiated as the identity (for attacks and training through a quantiser)."""
    return _StraightThroughFloor.apply(x)


def straight_through_clamp(x: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """clamp(x, low, high), differentiated as the identity (an attack can still move a clamped bin index)."""
    return _StraightThroughClamp.apply(x, low, high)


@dataclass(repr=False)
class Floor(Monotone):
    """floor(x) coordinate-wise, the quantiser of input abstractions (ONNX Floor).

    The model's own runtime may compute the floor's argument with different
    rounding (e.g. x / eta vs x * (1 / eta)), and floor jumps by 1 at integers;
    ``bounds`` therefore widens by ``rel_tol * |x|`` before rounding, so a bound
    within a few ulps of an integer covers both sides. The tolerance is
    relative, which covers a scaling in front of the floor (the input
    abstraction's x / eta; an exact 0 stays 0, so a clipped ball's lower end 0
    keeps its bin); an argument computed with cancelling offsets near 0 is not
    covered.
    """

    rel_tol: float = 1e-5

    def forward(self, x: Tensor) -> Tensor:
        return straight_through_floor(x)

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        return torch.floor(lower - self.rel_tol * lower.abs()), torch.floor(upper + self.rel_tol * upper.abs())


@dataclass(repr=False)
class Clip(Monotone):
    """min(max(x, low), high) coordinate-wise (ONNX Clip with constant bounds; None: unbounded)."""

    low: float | None = None
    high: float | None = None

    def forward(self, x: Tensor) -> Tensor:
        return straight_through_clamp(x, self.low, self.high)

    def __repr__(self) -> str:
        return f"Clip({self.low}, {self.high})"


@dataclass
class Node:
    op: Op
    inputs: tuple[int, ...]


class Network:
    """A DAG of ops in topological order; node 0 is the input, the last node the output.

    ``shapes[i]`` is the per-sample output shape of node i.
    """

    def __init__(self, input_shape: tuple[int, ...], ops: list[tuple[Op, tuple[int, ...]]]):
        self.nodes = [Node(Input(), ())] + [Node(op, tuple(inputs)) for op, inputs in ops]
        self.input_shape = tuple(input_shape)
        self.nodes[0].op.bind([])
        self.nodes[0].op.out_shape = self.input_shape
        self.shapes = [self.input_shape]
        for i, node in enumerate(self.nodes[1:], start=1):
            if len(node.inputs) != node.op.n_inputs or any(not 0 <= j < i for j in node.inputs):
                raise ValueError(f"node {i} ({node.op!r}) has invalid inputs {node.inputs}")
            node.op.bind([self.shapes[j] for j in node.inputs])
            probe = [torch.zeros(1, *self.shapes[j], dtype=self.dtype, device=self.device) for j in node.inputs]
            node.op.out_shape = tuple(node.op.forward(*probe).shape[1:])
            self.shapes.append(node.op.out_shape)
        self.consumers: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                self.consumers[j].append(i)

    @classmethod
    def chain(cls, input_shape: tuple[int, ...], ops: list[Op]) -> Network:
        """A sequential network: each op feeds the next."""
        return cls(input_shape, [(op, (i,)) for i, op in enumerate(ops)])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    @property
    def relu_nodes(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if isinstance(node.op, ReLU)]

    @property
    def dtype(self) -> torch.dtype:
        return next((t.dtype for n in self.nodes for t in n.op.tensors().values() if t.is_floating_point()),
                    torch.get_default_dtype())

    @property
    def device(self) -> torch.device:
        return next((t.device for n in self.nodes for t in n.op.tensors().values()), torch.device("cpu"))

    def to(self, device=None, dtype=None) -> Network:
        for node in self.nodes:
            node.op.to(device, dtype)
        return self

    def detach(self) -> Network:
        """Cut the parameters off torch's autograd graph (verification does not train them)."""
        for node in self.nodes:
            node.op.detach()
        return self

    def forward(self, x: Tensor, return_all: bool = False) -> Tensor | list[Tensor]:
        """Concrete evaluation; x: (N, *input_shape) -> (N, *output_shape)."""
        values = [x]
        for node in self.nodes[1:]:
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
        return values if return_all else values[-1]

    __call__ = forward

    def __repr__(self) -> str:
        lines = [f"Network(input {self.input_shape})"]
        for i, node in enumerate(self.nodes[1:], start=1):
            src = "" if node.inputs == (i - 1,) else f" <- {list(node.inputs)}"
            lines.append(f"  [{i}] {node.op!r}{src} -> {self.shapes[i]}")
        return "\n".join(lines)


def prepend(ops: list[Op], net: Network, input_shape: tuple[int, ...]) -> Network:
    """The network ``net(ops(x))`` for inputs of ``input_shape``: a chain of ops in front of net."""
    offset = len(ops)
    front = [(op, (i,)) for i, op in enumerate(ops)]
    back = [(node.op, tuple(j + offset for j in node.inputs)) for node in net.nodes[1:]]
    return Network(input_shape, front + back)
