"""ONNX models -> the network IR of :mod:`domains.network`, checked against onnxruntime.

``load_onnx(path)`` reads a model, converts its graph node by node (in the
graph's topological order) into a :class:`Network` and, by default, compares
the network with onnxruntime on random inputs.

Conventions:

- The model has one input and one output. If the input has rank >= 2 and a
  leading dim that is 1 or symbolic, that dim is the batch dim and the IR's
  per-sample shape is the rest; otherwise the whole input is one sample.
- Every tensor computed from the input is a *variable* (an IR node and its
  per-sample shape); every other tensor is a numpy *constant*. Nodes whose
  inputs are all constant are evaluated with onnx's reference implementation,
  so constant subgraphs (e.g. Shape -> Gather -> Concat -> Reshape) fold away.
  ``Shape`` of a variable reports a batch dim of 1.
- Each supported op type has one converter in ``_CONVERTERS``; a converter must
  read every attribute it accepts, and a node with an attribute its converter
  did not read is rejected.
- The output is flattened per sample, and an ElementwiseAffine (e.g. the Add of
  a MatMul + Add pair, or a BatchNormalization after a Conv) is folded into
  the Linear, Conv2d or ElementwiseAffine that feeds only it.

Supported: Add, AveragePool, BatchNormalization, Cast (to float), Clip (constant
bounds), Concat (of
variables, not along the batch axis), Constant, Conv (2-D, group=1), Div,
Dropout, Flatten, Floor, Gemm, GlobalAveragePool, Identity, LeakyRelu (0 <= alpha <= 1),
MatMul, MaxPool (2-D), Mul, Neg, Pad (constant zeros, last two dims), Relu, Reshape, Shape,
Sigmoid, Squeeze, Sub, Tanh, Transpose, Unsqueeze, plus any op on constants only. Floor and
Clip (e.g. the input abstraction of AbsCert-trained models) are bounded by intervals in every
domain.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model
from onnx.reference import ReferenceEvaluator
from torch import Tensor

from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh
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
    Op,
    Pad,
    ReLU,
    Reshape,
    Transpose,
)

FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
CHECK_RTOL = 1e-4


class OnnxImportError(ValueError):
    """An ONNX model that cannot be read or converted; the message is one line."""


class _NodeError(Exception):
    """A node cannot be converted; the caller adds the op type and node name."""


@dataclass(frozen=True)
class _Var:
    """A tensor computed from the network input: IR node ``node`` with per-sample shape ``shape``."""

    node: int
    shape: tuple[int, ...]


Value = _Var | np.ndarray


@dataclass
class OnnxModel:
    """An imported model: its IR and the onnxruntime session of the original (the concrete oracle)."""

    network: Network
    input_shape: tuple[int, ...]
    output_size: int
    input_name: str
    output_name: str
    batch_dim: bool
    path: Path
    sha256: str
    dynamic_batch: bool = False
    input_dtype: type = np.float32
    _session: Any = field(default=None, init=False, repr=False, compare=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime on a batch x (N, *input_shape) -> (N, output_size), one sample at a time if the
        model's batch dim is fixed (or absent)."""
        x = np.asarray(x, dtype=self.input_dtype)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected inputs of shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        if self._session is None:
            self._session = _session(self.path)
        if len(x) == 0:
            return np.zeros((0, self.output_size), dtype=np.float32)
        if self.dynamic_batch:
            return self._run_raw(x, len(x))
        return np.concatenate([self._run_raw(x[i:i + 1] if self.batch_dim else x[i], 1) for i in range(len(x))])

    def _run_raw(self, x: np.ndarray, n: int) -> np.ndarray:
        """One onnxruntime call on n samples in the model's own input layout -> (n, output_size)."""
        (y,) = self._session.run([self.output_name], {self.input_name: x})
        if y.size != n * self.output_size:
            raise ValueError(f"onnxruntime returned shape {y.shape} for {n} sample(s) of {self.output_size} outputs")
        return y.reshape(n, self.output_size)


def load_onnx(path, check: bool = True, n_check: int = 8, seed: int = 0) -> OnnxModel:
    """Import the ONNX model at ``path``; with ``check``, compare it with onnxruntime on ``n_check`` inputs.

    The network is in float64 (BatchNorm and normalisation folded in float64, never rounded to float32 here): the
    verifier casts a copy to the precision it computes in and keeps this one as the exact network."""
    path = Path(path)
    data, model = _read(path)
    graph = model.graph
    input_info, input_shape, batch_dim, dynamic = _graph_input(graph)
    if len(graph.output) != 1:
        raise OnnxImportError(f"the model has {len(graph.output)} outputs; exactly one is supported")
    network = _to_network(model, input_info.name, input_shape, batch_dim)
    result = OnnxModel(network, input_shape, math.prod(network.output_shape), input_info.name, graph.output[0].name,
                       batch_dim, path, hashlib.sha256(data).hexdigest(), dynamic,
                       FLOAT_TYPES[input_info.type.tensor_type.elem_type])
    if check and n_check > 0:
        _check(result, n_check, seed)
    return result


# ----------------------------------------------------------------------------- reading the file


def _read(path: Path) -> tuple[bytes, onnx.ModelProto]:
    """The file's bytes and the parsed model with its external data loaded."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OnnxImportError(f"cannot read ONNX model {path}: {e.strerror or e}") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises several types on malformed bytes
        raise OnnxImportError(f"cannot read ONNX model {path}: {_first_line(e)}") from None
    if model.ir_version == 0 or not model.graph.output:
        raise OnnxImportError(f"cannot read ONNX model {path}: not an ONNX model (no graph)")
    _load_external_data(model, path)
    return data, model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load tensors stored next to the model, refusing locations outside the model's folder."""
    folder = path.parent.resolve()
    external = [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not (folder / location).resolve().is_relative_to(folder):
            raise OnnxImportError(f"cannot read ONNX model {path}: external data '{location}' of tensor "
                                  f"'{tensor.name}' lies outside the model's folder")
    if external:
        try:
            load_external_data_for_model(model, str(folder))
        except Exception as e:  # onnx raises OSError or its own ValidationError
            raise OnnxImportError(f"cannot read ONNX model {path}: external data: {_first_line(e)}") from None


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of the graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_tensors(sub)


def _graph_input(graph: onnx.GraphProto) -> tuple[onnx.ValueInfoProto, tuple[int, ...], bool, bool]:
    """The single non-initializer input, its per-sample shape, whether it has a batch dim, and whether
    that batch dim is symbolic."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs)
        raise OnnxImportError(f"the model has {len(inputs)} inputs ({names}); exactly one is supported")
    info = inputs[0]
    tensor_type = info.type.tensor_type
    if tensor_type.elem_type not in FLOAT_TYPES:
        raise OnnxImportError(f"input '{info.name}' is not a float32/float64 tensor")
    dims = [d.dim_value if d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if not tensor_type.HasField("shape") or not dims:
        raise OnnxImportError(f"input '{info.name}' has no known shape")
    batch_dim = len(dims) >= 2 and dims[0] in (None, 1)
    shape = dims[1:] if batch_dim else dims
    if None in shape:
        shown = ["?" if d is None else d for d in dims]
        raise OnnxImportError(f"input '{info.name}' of shape {shown} has dynamic dims other than the batch dim")
    return info, tuple(shape), batch_dim, batch_dim and dims[0] is None


# ----------------------------------------------------------------------------- graph conversion


class _Attrs:
    """A node's attributes; the converter must read every attribute it accepts."""

    def __init__(self, node: onnx.NodeProto):
        self._values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self._read: set[str] = set()

    def get(self, name: str, default=None):
        self._read.add(name)
        value = self._values.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def ignore(self, *names: str) -> None:
        """Accept attributes that do not matter at inference."""
        self._read.update(names)

    def unread(self) -> list[str]:
        return sorted(self._values.keys() - self._read)


class _Builder:
    """The IR under construction. ``batch`` is 1 if ONNX tensors carry a leading batch axis, else 0:
    a variable of per-sample shape s has the ONNX shape (N, *s) or s."""

    def __init__(self, input_shape: tuple[int, ...], batch: int):
        self.batch = batch
        self.input = _Var(0, input_shape)
        self.ops: list[tuple[Op, tuple[int, ...]]] = []

    def emit(self, op: Op, *inputs: _Var) -> _Var:
        """Append op applied to inputs; its output shape comes from a forward pass on zeros."""
        try:
            op.bind([x.shape for x in inputs])
            probe = op.forward(*(torch.zeros(1, *x.shape, dtype=torch.float64) for x in inputs))
        except RuntimeError as e:
            raise _NodeError(f"shape mismatch ({_first_line(e)})") from None
        op.out_shape = tuple(probe.shape[1:])
        self.ops.append((op, tuple(x.node for x in inputs)))
        return _Var(len(self.ops), op.out_shape)

    def onnx_shape(self, x: _Var) -> tuple[int, ...]:
        """x's ONNX shape, with a batch dim of 1."""
        return (1,) * self.batch + x.shape

    def axis(self, x: _Var, axis: int) -> int:
        """The per-sample axis of ONNX axis ``axis`` (may be negative) of x."""
        rank = len(self.onnx_shape(x))
        if not -rank <= axis < rank:
            raise _NodeError(f"axis {axis} out of range for rank {rank}")
        per_sample = axis % rank - self.batch
        if per_sample < 0:
            raise _NodeError("operating on the batch axis is not supported")
        return per_sample

    def broadcast(self, c: np.ndarray, x: _Var) -> np.ndarray:
        """Constant c (broadcast against x the ONNX way) as an array broadcastable to x's per-sample shape."""
        c = np.asarray(c, dtype=np.float64)
        full = self.onnx_shape(x)
        try:
            ok = np.broadcast_shapes(c.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            raise _NodeError(f"constant of shape {c.shape} does not broadcast to the input's shape {full}")
        c = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
        return c.reshape(c.shape[self.batch:])

    def affine(self, x: _Var, scale, shift) -> _Var:
        """x * scale + shift for constants broadcast against x."""
        return self.emit(ElementwiseAffine(_tensor(self.broadcast(scale, x)), _tensor(self.broadcast(shift, x))), x)

    def linear(self, x: _Var, weight: np.ndarray) -> _Var:
        """x @ weight.T over x's last axis for a constant weight (out, in)."""
        if weight.ndim != 2 or not x.shape or x.shape[-1] != weight.shape[1]:
            raise _NodeError(f"weight of shape {weight.shape} does not match an input of shape {self.onnx_shape(x)}")
        return self.emit(Linear(_tensor(weight), _tensor(np.zeros(weight.shape[0]))), x)

    def reshape(self, x: _Var, shape) -> _Var:
        """x reshaped per sample (one entry may be -1); no op if the shape does not change."""
        size, shape = math.prod(x.shape), list(shape)
        if shape.count(-1) == 1:
            known = -math.prod(shape)
            shape[shape.index(-1)] = size // known if known > 0 and size % known == 0 else -1
        if shape.count(-1) or math.prod(shape) != size or min(shape, default=1) < 1:
            raise _NodeError(f"cannot reshape per-sample shape {x.shape} to {tuple(shape)}")
        return x if tuple(shape) == x.shape else self.emit(Reshape(tuple(shape)), x)


def _to_network(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...], batch_dim: bool) -> Network:
    """The IR (in float64) of the model's graph; the output flattened per sample."""
    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    builder = _Builder(input_shape, int(batch_dim))
    values: dict[str, Value] = {t.name: _initializer(t) for t in graph.initializer}
    values[input_name] = builder.input
    used = {name for node in graph.node for name in node.input} | {graph.output[0].name}
    for node in graph.node:
        _convert_node(builder, node, values, opsets, used)
    out = values.get(graph.output[0].name)
    if not isinstance(out, _Var):
        raise OnnxImportError(f"the model's output '{graph.output[0].name}' does not depend on its input")
    if len(out.shape) != 1:
        out = builder.emit(Reshape((math.prod(out.shape),)), out)
    return Network(input_shape, _finalize(builder.ops, out.node))


def _initializer(tensor: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # malformed tensors raise ValueError or TypeError from numpy
        raise OnnxImportError(f"cannot read initializer '{tensor.name}': {_first_line(e)}") from None


def _convert_node(builder: _Builder, node: onnx.NodeProto, values: dict[str, Value], opsets: dict[str, int],
                  used: set[str]) -> None:
    """Convert one node, adding its outputs to ``values``."""
    name = node.name or node.output[0]
    missing = [i for i in node.input if i and i not in values]
    if missing:
        raise OnnxImportError(f"ONNX node '{name}' uses '{missing[0]}' before it is defined")
    inputs = [values[i] if i else None for i in node.input]
    if not any(isinstance(v, _Var) for v in inputs):
        values.update(zip(node.output, _fold(node, name, inputs, opsets)))
        return
    convert = _CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if convert is None:
        op_type = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        raise OnnxImportError(f"unsupported ONNX op '{op_type}' at node '{name}' "
                              f"(supported: {', '.join(sorted(_CONVERTERS))})")
    attrs = _Attrs(node)
    try:
        values[node.output[0]] = convert(builder, attrs, *inputs)
        if attrs.unread():
            raise _NodeError(f"unsupported attribute '{attrs.unread()[0]}'")
        extra = [o for o in node.output[1:] if o in used]
        if extra:
            raise _NodeError(f"output '{extra[0]}' is not supported (only the first output)")
    except _NodeError as e:
        raise OnnxImportError(f"unsupported ONNX {node.op_type} at node '{name}': {e}") from None
    except (ValueError, TypeError, IndexError) as e:  # malformed attributes or constants
        raise OnnxImportError(f"cannot convert ONNX {node.op_type} node '{name}': {_first_line(e)}") from None


def _fold(node: onnx.NodeProto, name: str, inputs: list[np.ndarray | None], opsets: dict[str, int]):
    """Evaluate a node whose inputs are all constant with onnx's reference implementation."""
    feeds = {i: v for i, v in zip(node.input, inputs) if i}
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(node, opsets=opsets).run(None, feeds)]
    except Exception as e:  # the reference implementation raises whatever its op code raises
        raise OnnxImportError(f"cannot evaluate constant ONNX {node.op_type} node '{name}': {_first_line(e)}") from None


def _finalize(ops: list[tuple[Op, tuple[int, ...]]], out: int) -> list[tuple[Op, tuple[int, ...]]]:
    """The ops node ``out`` depends on, renumbered, each ElementwiseAffine folded into the Linear, Conv2d or
    ElementwiseAffine that feeds only it (node indices: 0 is the input, op k is node k + 1)."""
    needed = {out}
    for i in range(out, 0, -1):
        if i in needed:
            needed.update(ops[i - 1][1])
    consumers = Counter(j for i in needed - {0} for j in ops[i - 1][1])
    new_index, kept = {0: 0}, []
    for i in sorted(needed - {0}):
        op, inputs = ops[i - 1]
        source = new_index[inputs[0]]
        if isinstance(op, ElementwiseAffine) and source > 0 and consumers[inputs[0]] == 1 \
                and _fuse(kept[source - 1][0], op):
            new_index[i] = source
        else:
            kept.append((op, tuple(new_index[j] for j in inputs)))
            new_index[i] = len(kept)
    return kept


def _fuse(op: Op, affine: ElementwiseAffine) -> bool:
    """Fold ``affine`` applied after ``op`` into ``op`` (in place) if the result is an op of the same kind."""
    if isinstance(op, ElementwiseAffine):
        op.scale, op.shift = op.scale * affine.scale, op.shift * affine.scale + affine.shift
        return True
    if not isinstance(op, Linear | Conv2d):
        return False
    axis = len(op.out_shape) - 1 if isinstance(op, Linear) else 0
    scale, shift = (_along_axis(t, op.out_shape, axis) for t in (affine.scale, affine.shift))
    if scale is None or shift is None:
        return False
    op.weight = op.weight * scale.reshape(-1, *[1] * (op.weight.dim() - 1))
    op.bias = op.bias * scale + shift
    return True


def _along_axis(t: Tensor, shape: tuple[int, ...], axis: int) -> Tensor | None:
    """t (broadcastable to shape) as a vector of length shape[axis], if t is constant along the other axes."""
    t = t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape))
    if any(n != 1 for i, n in enumerate(t.shape) if i != axis):
        return None
    return t.reshape(-1).expand(shape[axis])


# ----------------------------------------------------------------------------- converters
# Each takes (builder, attrs, *node inputs: _Var | np.ndarray | None) and returns the node's first output.


def _tensor(a) -> Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64))


def _const(v: Value | None, what: str) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise _NodeError(f"{what} must be a constant")
    return v


def _var(v: Value | None, what: str) -> _Var:
    if not isinstance(v, _Var):
        raise _NodeError(f"{what} must depend on the network input")
    return v


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _identity(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return x


def _dropout(b: _Builder, attrs: _Attrs, x: _Var, ratio=None, training_mode=None) -> _Var:
    """Inference-mode dropout is the identity."""
    x = _var(x, "data")
    attrs.ignore("ratio", "seed")
    if training_mode is not None and np.any(_const(training_mode, "training_mode")):
        raise _NodeError("training_mode=1 is not supported")
    return x


def _cast(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    """A cast to float32/float64 keeps the value."""
    to = attrs.get("to")
    attrs.ignore("saturate")
    if to not in FLOAT_TYPES:
        raise _NodeError(f"cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    return x


def _relu(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return b.emit(ReLU(), x)


def _leaky_relu(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    alpha = float(attrs.get("alpha", 0.01))
    if not 0.0 <= alpha <= 1.0:
        raise _NodeError(f"alpha={alpha} is not supported (only 0 <= alpha <= 1)")
    return b.emit(LeakyReLU(alpha), x)


def _sigmoid(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return b.emit(Sigmoid(), x)


def _tanh(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return b.emit(Tanh(), x)


def _floor(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return b.emit(Floor(), x)


def _clip(b: _Builder, attrs: _Attrs, x: _Var, low: Value | None = None, high: Value | None = None) -> _Var:
    """Clip by constant scalars (inputs since opset 11, attributes min / max before)."""
    bounds = [attrs.get(name) if v is None else _const(v, "a Clip bound") for name, v in (("min", low), ("max", high))]
    return b.emit(Clip(*(None if v is None else float(np.asarray(v).reshape(())) for v in bounds)), x)


def _concat(b: _Builder, attrs: _Attrs, *xs: Value) -> _Var:
    """Concatenation of variables (a constant part is not supported) along a per-sample axis."""
    xs = [_var(x, f"input {i}") for i, x in enumerate(xs)]
    axis = b.axis(xs[0], attrs.get("axis"))
    return b.emit(Concat(axis, len(xs)), *xs)


def _shape(b: _Builder, attrs: _Attrs, x: _Var) -> np.ndarray:
    """The ONNX shape of a variable (batch dim 1) as a constant."""
    start, end = attrs.get("start", 0), attrs.get("end")
    return np.array(b.onnx_shape(x), dtype=np.int64)[start:end]


def _gemm(b: _Builder, attrs: _Attrs, a: Value, w: Value, c: Value | None = None) -> _Var:
    """alpha * A @ B' + beta * C with A (N, K) the variable and B constant: (K, M), or (M, K) if transB."""
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    if trans_a:
        raise _NodeError("transA=1 is not supported")
    weight = alpha * _const(w, "B").astype(np.float64)
    y = b.linear(_var(a, "A"), weight if trans_b else weight.T)
    return y if c is None else b.affine(y, 1.0, beta * _const(c, "C"))


def _matmul(b: _Builder, attrs: _Attrs, x: Value, y: Value) -> _Var:
    """x @ W or W @ x for a constant 2-D W."""
    if isinstance(x, _Var) and isinstance(y, np.ndarray) and y.ndim == 2:
        return b.linear(x, y.T)
    if isinstance(y, _Var) and isinstance(x, np.ndarray) and x.ndim == 2:
        return _left_matmul(b, x, y)
    raise _NodeError("one operand must be a constant 2-D matrix")


def _left_matmul(b: _Builder, weight: np.ndarray, x: _Var) -> _Var:
    """W @ x for W (M, K): contracts x's second-to-last axis (or its only axis when unbatched)."""
    if len(x.shape) == 1 and not b.batch:
        return b.linear(x, weight)
    if len(x.shape) < 2:
        raise _NodeError("W @ x would contract the batch axis")
    perm = (*range(len(x.shape) - 2), len(x.shape) - 1, len(x.shape) - 2)
    return b.emit(Transpose(perm), b.linear(b.emit(Transpose(perm), x), weight))


def _binary(kind: str, b: _Builder, attrs: _Attrs, x: Value, y: Value) -> _Var:
    """Add / Sub / Mul / Div where at most one side is a variable, or the residual x + y / x - y."""
    if isinstance(x, _Var) and isinstance(y, _Var):
        return _binary_vars(kind, b, x, y)
    swapped = isinstance(y, _Var)
    var, c = (y, x.astype(np.float64)) if swapped else (x, y.astype(np.float64))
    if kind == "Add":
        return b.affine(var, 1.0, c)
    if kind == "Mul":
        return b.affine(var, c, 0.0)
    if kind == "Sub":
        return b.affine(var, -1.0, c) if swapped else b.affine(var, 1.0, -c)
    if swapped:
        raise _NodeError("division by a non-constant tensor is not linear")
    if not np.all(c):
        raise _NodeError("division by a constant containing zero")
    return b.affine(var, 1.0 / c, 0.0)


def _binary_vars(kind: str, b: _Builder, x: _Var, y: _Var) -> _Var:
    if x.shape != y.shape:
        raise _NodeError(f"broadcasting between non-constant tensors {b.onnx_shape(x)} and {b.onnx_shape(y)} "
                         "is not supported")
    if kind == "Add":
        return b.emit(Add(), x, y)
    if kind == "Sub":
        return b.emit(Add(), x, b.affine(y, -1.0, 0.0))
    raise _NodeError(f"{kind} of two non-constant tensors is not linear")


def _neg(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    return b.affine(x, -1.0, 0.0)


def _batchnorm(b: _Builder, attrs: _Attrs, x: _Var, scale, bias, mean, var) -> _Var:
    """Inference-mode batch normalisation over ONNX axis 1: an ElementwiseAffine per channel."""
    eps = attrs.get("epsilon", 1e-5)
    attrs.ignore("momentum")
    training, spatial = attrs.get("training_mode", 0), attrs.get("spatial", 1)
    if training or spatial != 1:
        raise _NodeError("only inference mode with spatial=1 is supported")
    s = _const(scale, "scale") / np.sqrt(_const(var, "input_var").astype(np.float64) + eps)
    t = _const(bias, "B") - _const(mean, "input_mean") * s
    x = _var(x, "X")
    trailing = (1,) * (len(x.shape) - b.axis(x, 1) - 1)
    return b.affine(x, s.reshape(-1, *trailing), t.reshape(-1, *trailing))


def _image(b: _Builder, x: Value) -> _Var:
    """x as an (N, C, H, W) variable."""
    if not isinstance(x, _Var) or not b.batch or len(x.shape) != 3:
        raise _NodeError("the input must be a non-constant (N, C, H, W) tensor")
    return x


def _spatial_pads(attrs: _Attrs, size, kernel, strides, dilations) -> tuple[int, int, int, int]:
    """ONNX (top, left, bottom, right) padding of a window op, auto_pad resolved."""
    auto_pad, pads = attrs.get("auto_pad", "NOTSET"), tuple(attrs.get("pads", (0, 0, 0, 0)))
    if auto_pad == "NOTSET":
        return pads
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise _NodeError(f"auto_pad={auto_pad} is not supported")
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return (*begin, *end)


def _padded(b: _Builder, x: _Var, pads, limit) -> tuple[_Var, tuple[int, int]]:
    """x and the symmetric padding (ph, pw) left for the window op: asymmetric pads, or pads above
    ``limit``, become a Pad op."""
    top, left, bottom, right = pads
    if min(pads) < 0:
        raise _NodeError(f"negative pads {pads} are not supported")
    if (top, left) == (bottom, right) and top <= limit[0] and left <= limit[1]:
        return x, (top, left)
    return b.emit(Pad((left, right, top, bottom)), x), (0, 0)


def _conv(b: _Builder, attrs: _Attrs, x: Value, w: Value, bias: Value | None = None) -> _Var:
    """2-D convolution of x (N, C, H, W) by a constant weight (C_out, C, kh, kw), group=1."""
    x, weight = _image(b, x), _const(w, "weight")
    group, kernel = attrs.get("group", 1), tuple(attrs.get("kernel_shape", weight.shape[2:]))
    strides, dilations = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1)))
    if weight.ndim != 4:
        raise _NodeError("only 2-D convolutions are supported")
    if group != 1:
        raise _NodeError(f"group={group} is not supported (only group=1)")
    if kernel != weight.shape[2:]:
        raise _NodeError(f"kernel_shape {kernel} does not match the weight's {weight.shape[2:]}")
    x, padding = _padded(b, x, _spatial_pads(attrs, x.shape[1:], kernel, strides, dilations), (math.inf,) * 2)
    bias = np.zeros(weight.shape[0]) if bias is None else _const(bias, "bias")
    return b.emit(Conv2d(_tensor(weight), _tensor(bias), strides, padding, dilations), x)


def _avgpool(b: _Builder, attrs: _Attrs, x: Value) -> _Var:
    """Average pooling of x (N, C, H, W); padding only with count_include_pad=1."""
    x, kernel = _image(b, x), tuple(attrs.get("kernel_shape", ()))
    strides, dilations = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1)))
    count_include_pad, ceil_mode = attrs.get("count_include_pad", 0), attrs.get("ceil_mode", 0)
    if len(kernel) != 2 or dilations != (1, 1):
        raise _NodeError(f"only 2-D pooling without dilation is supported (kernel {kernel}, dilations {dilations})")
    pads = _spatial_pads(attrs, x.shape[1:], kernel, strides, dilations)
    if any(pads) and not count_include_pad:
        raise _NodeError("padding with count_include_pad=0 is not supported")
    padded = (n + p + q for n, p, q in zip(x.shape[1:], pads[:2], pads[2:]))
    if ceil_mode and any((n - k) % s for n, k, s in zip(padded, kernel, strides)):
        raise _NodeError("ceil_mode=1 with a partial last window is not supported")
    x, padding = _padded(b, x, pads, tuple(k // 2 for k in kernel))
    return b.emit(AvgPool2d(kernel, strides, padding), x)


def _maxpool(b: _Builder, attrs: _Attrs, x: Value) -> _Var:
    """Max pooling of x (N, C, H, W), padded with -inf; ceil_mode only where no window is partial."""
    x, kernel = _image(b, x), tuple(attrs.get("kernel_shape", ()))
    strides, dilations = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1)))
    if len(kernel) != 2:
        raise _NodeError(f"only 2-D max pooling is supported (kernel {kernel})")
    if attrs.get("storage_order", 0) != 0:
        raise _NodeError("storage_order=1 is not supported")
    top, left, bottom, right = _spatial_pads(attrs, x.shape[1:], kernel, strides, dilations)
    if min(top, left, bottom, right) < 0:
        raise _NodeError("negative pads are not supported")
    spans = [n + p + q - d * (k - 1) - 1 for n, p, q, k, d in zip(x.shape[1:], (top, left), (bottom, right),
                                                                   kernel, dilations)]
    if min(spans) < 0:
        raise _NodeError(f"the kernel {kernel} is larger than the padded input {x.shape[1:]}")
    if attrs.get("ceil_mode", 0) and any(span % s for span, s in zip(spans, strides)):
        raise _NodeError("ceil_mode=1 with a partial last window is not supported")
    return b.emit(MaxPool2d(kernel, strides, (left, right, top, bottom), dilations), x)


def _global_avgpool(b: _Builder, attrs: _Attrs, x: Value) -> _Var:
    x = _image(b, x)
    return b.emit(AvgPool2d(x.shape[1:], (1, 1)), x)


def _pad(b: _Builder, attrs: _Attrs, x: _Var, pads=None, value=None, axes=None) -> _Var:
    """Zero padding of the last two dims (pads as an attribute before opset 11, as inputs after)."""
    mode, pads_attr, value_attr = attrs.get("mode", "constant"), attrs.get("pads"), attrs.get("value", 0.0)
    if mode != "constant":
        raise _NodeError(f"mode={mode} is not supported")
    pads = [int(p) for p in (pads_attr if pads_attr is not None else _const(pads, "pads"))]
    if np.any(value_attr if value is None else _const(value, "constant_value")):
        raise _NodeError("only zero padding is supported")
    rank = len(b.onnx_shape(_var(x, "data")))
    axes = range(rank) if axes is None else [int(a) % rank for a in _const(axes, "axes")]
    if len(pads) != 2 * len(axes):
        raise _NodeError(f"pads {pads} do not match {len(axes)} axes")
    begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    padded = {a for a in axes if begin[a] or end[a]}
    if not padded:
        return x
    if len(x.shape) < 2 or not padded <= {rank - 2, rank - 1} or min(pads) < 0:
        raise _NodeError(f"pads {pads}: only non-negative padding of the last two dims is supported")
    return b.emit(Pad((begin.get(rank - 1, 0), end.get(rank - 1, 0), begin.get(rank - 2, 0), end.get(rank - 2, 0))),
                  x)


def _transpose(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    """A permutation of the per-sample axes; the batch axis stays first."""
    rank = len(b.onnx_shape(x))
    perm = tuple(attrs.get("perm", range(rank - 1, -1, -1)))
    if sorted(perm) != list(range(rank)) or (b.batch and perm[0] != 0):
        raise _NodeError(f"perm {perm} must permute the {rank} axes and keep the batch axis first")
    perm = tuple(p - b.batch for p in perm[b.batch:])
    return x if perm == tuple(range(len(perm))) else b.emit(Transpose(perm), x)


def _flatten(b: _Builder, attrs: _Attrs, x: _Var) -> _Var:
    """ONNX Flatten to (prod(dims[:axis]), prod(dims[axis:])); with a batch dim, only axis=1 (or one with
    unit dims between the batch axis and it)."""
    shape, axis = b.onnx_shape(x), attrs.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    rows, cols = math.prod(shape[:axis]), math.prod(shape[axis:])
    if not b.batch:
        return b.reshape(x, (rows, cols))
    if axis == 0 or rows != 1:
        raise _NodeError(f"axis={axis} would merge the batch axis with other dims")
    return b.reshape(x, (cols,))


def _reshape(b: _Builder, attrs: _Attrs, x: _Var, shape: Value) -> _Var:
    """ONNX Reshape: 0 copies the input dim, -1 is inferred; the batch entry must be 0, 1 or an inferred -1."""
    allow_zero, source = attrs.get("allowzero", 0), b.onnx_shape(_var(x, "data"))
    target = [int(s) for s in _const(shape, "shape").reshape(-1)]
    if not allow_zero:
        if any(s == 0 and i >= len(source) for i, s in enumerate(target)):
            raise _NodeError(f"shape {target} copies a dim the input does not have")
        target = [source[i] if s == 0 else s for i, s in enumerate(target)]
    if not b.batch:
        return b.reshape(x, target)
    head, rest = (target[0], target[1:]) if target else (None, [])
    if head != 1 and not (head == -1 and -1 not in rest):
        raise _NodeError(f"shape {target} changes the batch axis")
    return b.reshape(x, rest)


def _axes(attrs: _Attrs, axes: Value | None, rank: int) -> list[int] | None:
    """Squeeze/Unsqueeze axes (an attribute before opset 13, an input after), normalised to [0, rank)."""
    values = attrs.get("axes")
    if values is None and axes is not None:
        values = _const(axes, "axes").reshape(-1)
    if values is None:
        return None
    if any(not -rank <= int(a) < rank for a in values):
        raise _NodeError(f"axes {list(values)} out of range for rank {rank}")
    return sorted({int(a) % rank for a in values})


def _squeeze(b: _Builder, attrs: _Attrs, x: _Var, axes: Value | None = None) -> _Var:
    source = b.onnx_shape(_var(x, "data"))
    axes = _axes(attrs, axes, len(source))
    if axes is None and b.batch:
        raise _NodeError("Squeeze without axes would also drop a batch dim of size 1")
    axes = [i for i, n in enumerate(source) if n == 1] if axes is None else axes
    if (b.batch and 0 in axes) or any(source[a] != 1 for a in axes):
        raise _NodeError(f"cannot squeeze axes {axes} of shape {source} (batch axis or not of size 1)")
    return b.reshape(x, [n for i, n in enumerate(source) if i not in axes][b.batch:])


def _unsqueeze(b: _Builder, attrs: _Attrs, x: _Var, axes: Value | None = None) -> _Var:
    source = b.onnx_shape(_var(x, "data"))
    count = len(attrs.get("axes") or []) if axes is None else _const(axes, "axes").size
    axes = _axes(attrs, axes, len(source) + count)
    if axes is None or (b.batch and 0 in axes):
        raise _NodeError(f"axes {axes}: an axis before the batch axis (or no axes) is not supported")
    dims = iter(source)
    target = [1 if i in axes else next(dims) for i in range(len(source) + len(axes))]
    return b.reshape(x, target[b.batch:])


_CONVERTERS = {
    "Add": partial(_binary, "Add"),
    "AveragePool": _avgpool,
    "BatchNormalization": _batchnorm,
    "Cast": _cast,
    "Clip": _clip,
    "Concat": _concat,
    "Conv": _conv,
    "Div": partial(_binary, "Div"),
    "Dropout": _dropout,
    "Flatten": _flatten,
    "Floor": _floor,
    "Gemm": _gemm,
    "GlobalAveragePool": _global_avgpool,
    "Identity": _identity,
    "LeakyRelu": _leaky_relu,
    "MatMul": _matmul,
    "MaxPool": _maxpool,
    "Mul": partial(_binary, "Mul"),
    "Neg": _neg,
    "Pad": _pad,
    "Relu": _relu,
    "Reshape": _reshape,
    "Shape": _shape,
    "Sigmoid": _sigmoid,
    "Squeeze": _squeeze,
    "Sub": partial(_binary, "Sub"),
    "Tanh": _tanh,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
}


# ----------------------------------------------------------------------------- onnxruntime


def _session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxImportError(f"onnxruntime cannot load {path}: {_first_line(e)}") from None


def _check(model: OnnxModel, n: int, seed: int) -> None:
    """Compare the (float64) IR with onnxruntime on n inputs: uniform in [0, 1], a quarter standard normal."""
    rng = np.random.default_rng(seed)
    n_normal = n // 4
    x = np.concatenate([rng.uniform(0.0, 1.0, (n - n_normal, *model.input_shape)),
                        rng.standard_normal((n_normal, *model.input_shape))]).astype(model.input_dtype)
    try:
        expected = model.run(x).astype(np.float64)
    except OnnxImportError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        raise OnnxImportError(f"onnxruntime cannot run {model.path}: {_first_line(e)}") from None
    got = model.network(torch.from_numpy(x.astype(np.float64))).reshape(n, -1).numpy()
    diff = float(np.abs(got - expected).max())
    tolerance = CHECK_RTOL * max(1.0, float(np.abs(expected).max()))
    if not diff <= tolerance:
        raise OnnxImportError(f"imported network disagrees with onnxruntime (max abs diff {diff:.3g} > "
                              f"{tolerance:.3g})")
