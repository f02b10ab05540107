"""ONNX import: tiny hand-built graphs per op, torch exports, the VNN-COMP networks, and the error cases.

Every successful import is compared with onnxruntime twice: by ``load_onnx``'s own check and here, on
other random inputs, through ``OnnxModel.run`` and ``Network.forward``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nncert.domains.activations import LeakyReLU, Sigmoid, Tanh
from nncert.domains.from_torch import Normalize
from nncert.domains.maxpool import MaxPool2d
from nncert.domains.network import (
    AvgPool2d,
    Clip,
    Concat,
    Conv2d,
    ElementwiseAffine,
    Floor,
    Linear,
    Pad,
    ReLU,
    Reshape,
    Transpose,
)
from nncert.verifier import onnx_import
from nncert.verifier.onnx_import import OnnxImportError, OnnxModel, load_onnx
from tests.paths import vnncomp_dir

VNNCOMP = vnncomp_dir() or Path("/nonexistent")
RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- helpers


def const(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    """A random float32 initializer."""
    values = RNG.uniform(0.5, 1.5, shape) if positive else RNG.standard_normal(shape)
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def save(tmp_path: Path, input_shape, nodes, initializers=(), opset: int = 13, extra_inputs=(),
         outputs=("y",), name: str = "model.onnx") -> Path:
    """A checked single-input model computing ``y`` from ``x`` of ``input_shape`` (str entries are symbolic)."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, input_shape) for n in ("x", *extra_inputs)]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def node(op_type: str, inputs, output: str = "y", **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, list(inputs), [output], name=f"{op_type}_{output}", **attrs)


def assert_matches_onnxruntime(model: OnnxModel, n: int = 5) -> None:
    """The IR and onnxruntime agree on fresh inputs (both signs) and outputs are flat per sample."""
    x = RNG.uniform(-2, 2, (n, *model.input_shape)).astype(np.float32)
    expected = model.run(x)
    got = model.network(torch.from_numpy(x).double()).detach().numpy()
    assert expected.shape == got.shape == (n, model.output_size)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def op_types(model: OnnxModel) -> list[type]:
    return [type(n.op) for n in model.network.nodes[1:]]


def import_and_compare(path: Path) -> OnnxModel:
    model = load_onnx(path)
    weights = [t for n in model.network.nodes for t in n.op.tensors().values() if t.is_floating_point()]
    assert all(t.dtype == torch.float64 for t in weights)  # never rounded to float32 on import
    assert_matches_onnxruntime(model)
    return model


# ----------------------------------------------------------------------------- one graph per op


def gemm_case(trans_b, alpha, beta, c_shape):
    w = const("w", 4, 6) if trans_b else const("w", 6, 4)
    inputs = ["x", "w"] + (["c"] if c_shape is not None else [])
    inits = [w] + ([const("c", *c_shape)] if c_shape is not None else [])
    return ["N", 6], [node("Gemm", inputs, alpha=alpha, beta=beta, transB=trans_b)], inits


def conv_case(pads=None, strides=(1, 1), dilations=(1, 1), auto_pad=None, bias=True):
    attrs = {"strides": list(strides), "dilations": list(dilations)}
    attrs.update({"pads": list(pads)} if pads is not None else {})
    attrs.update({"auto_pad": auto_pad} if auto_pad is not None else {})
    inits = [const("w", 4, 2, 3, 3)] + ([const("b", 4)] if bias else [])
    return [1, 2, 7, 8], [node("Conv", ["x", "w"] + (["b"] if bias else []), **attrs)], inits


def avgpool_case(kernel, strides, pads=None, count_include_pad=0):
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "count_include_pad": count_include_pad}
    attrs.update({"pads": list(pads)} if pads is not None else {})
    return [1, 2, 6, 7], [node("AveragePool", ["x"], **attrs)], []


def batchnorm_case(shape):
    channels = shape[1]
    inits = [const("s", channels), const("bias", channels), const("mean", channels),
             const("var", channels, positive=True)]
    return shape, [node("BatchNormalization", ["x", "s", "bias", "mean", "var"], epsilon=1e-3)], inits


def arith_case(op_type, const_first, c_shape):
    c = const("c", *c_shape, positive=op_type == "Div")
    return [1, 3, 4, 4], [node(op_type, ["c", "x"] if const_first else ["x", "c"])], [c]


def residual_case(kind):
    nodes = [node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "r"),
             node("Conv", ["r", "w2", "b2"], "h2", pads=[1, 1, 1, 1]), node(kind, ["h2", "x"], "s"),
             node("Relu", ["s"])]
    return [1, 2, 5, 5], nodes, [const("w1", 3, 2, 3, 3), const("b1", 3), const("w2", 2, 3, 3, 3), const("b2", 2)]


def nhwc_case():
    nodes = [node("Transpose", ["x"], "t", perm=[0, 3, 1, 2]), node("Conv", ["t", "w", "b"], "h"),
             node("Relu", ["h"], "r"), node("Flatten", ["r"], "f"), node("Gemm", ["f", "fc"], transB=1)]
    return ["N", 6, 6, 3], nodes, [const("w", 4, 3, 3, 3), const("b", 4), const("fc", 5, 64)]


def reshape_case(shape, input_shape=(1, 2, 4, 4)):
    return list(input_shape), [node("Reshape", ["x", "shape"])], [ints("shape", shape)]


def shape_folding_case():
    """x.view(x.size(0), -1) as the legacy torch exporter writes it: Shape -> Gather -> Unsqueeze -> Concat."""
    nodes = [node("Shape", ["x"], "s"), node("Gather", ["s", "zero"], "n", axis=0),
             node("Unsqueeze", ["n", "axes"], "n1"), node("Concat", ["n1", "minus_one"], "shape", axis=0),
             node("Reshape", ["x", "shape"], "f"), node("Gemm", ["f", "fc"], transB=1)]
    inits = [ints("zero", 0), ints("axes", [0]), ints("minus_one", [-1]), const("fc", 3, 32)]
    return [1, 2, 4, 4], nodes, inits


def mlp_case():
    """[1, 12, 1] -> Flatten -> MatMul + Add -> Relu -> MatMul (no bias)."""
    nodes = [node("Flatten", ["x"], "f"), node("MatMul", ["f", "w1"], "m"), node("Add", ["m", "b1"], "a"),
             node("Relu", ["a"], "r"), node("MatMul", ["r", "w2"])]
    return [1, 12, 1], nodes, [const("w1", 12, 7), const("b1", 7), const("w2", 7, 3)]


def left_matmul_case():
    """W @ x contracting the second-to-last axis of x [1, 4, 3]."""
    return [1, 4, 3], [node("MatMul", ["w", "x"], "m"), node("Relu", ["m"])], [const("w", 5, 4)]


def pad_case(opset):
    if opset < 11:
        nodes = [node("Pad", ["x"], "p", pads=[0, 0, 1, 0, 0, 0, 2, 3], mode="constant", value=0.0)]
        inits = []
    else:
        nodes = [node("Pad", ["x", "pads", "zero"], "p", mode="constant")]
        inits = [ints("pads", [0, 0, 1, 0, 0, 0, 2, 3]), numpy_helper.from_array(np.float32(0.0), "zero")]
    return [1, 2, 4, 4], nodes + [node("Relu", ["p"])], inits


def identity_case():
    nodes = [node("Identity", ["x"], "i"), node("Dropout", ["i", "ratio", "training"], "d"),
             node("Neg", ["d"], "n"), node("Cast", ["n"], "c", to=TensorProto.FLOAT), node("Relu", ["c"])]
    inits = [numpy_helper.from_array(np.float32(0.5), "ratio"), numpy_helper.from_array(np.bool_(False), "training")]
    return ["N", 5], nodes, inits


def constant_node_case():
    value = helper.make_tensor("v", TensorProto.FLOAT, [5], RNG.standard_normal(5).tolist())
    nodes = [node("Constant", [], "c", value=value), node("Constant", [], "k", value_float=2.5),
             node("Add", ["x", "c"], "a"), node("Mul", ["k", "a"])]
    return [1, 5], nodes, []


def squeeze_case(opset):
    if opset < 13:
        nodes = [node("Squeeze", ["x"], "s", axes=[1]), node("Unsqueeze", ["s"], "u", axes=[-1])]
        inits = []
    else:
        nodes = [node("Squeeze", ["x", "a1"], "s"), node("Unsqueeze", ["s", "a2"], "u")]
        inits = [ints("a1", [1]), ints("a2", [-1])]
    return [1, 1, 6], nodes + [node("Relu", ["u"])], inits


def quantize_case(opset):
    """An input abstraction: Floor(3 x), clipped, concatenated with x along the channels."""
    if opset < 11:
        clip, inits = node("Clip", ["f"], "c", min=-2.0, max=1.0), []
    else:
        clip, inits = node("Clip", ["f", "", "hi"], "c"), [numpy_helper.from_array(np.float32(1.0), "hi")]
    nodes = [node("Mul", ["x", "three"], "m"), node("Floor", ["m"], "f"), clip, node("Concat", ["x", "c"], axis=1)]
    return [1, 3, 2, 2], nodes, inits + [numpy_helper.from_array(np.float32(3.0), "three")]


def global_avgpool_case():
    return [1, 1, 6, 6], [node("GlobalAveragePool", ["x"])], []


def maxpool_case(kernel, strides, pads=None, dilations=(1, 1), auto_pad=None, ceil_mode=0):
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations),
             "ceil_mode": ceil_mode}
    attrs.update({"pads": list(pads)} if pads is not None else {})
    attrs.update({"auto_pad": auto_pad} if auto_pad is not None else {})
    return [1, 2, 7, 8], [node("MaxPool", ["x"], **attrs)], []


def activation_case(op_type, **attrs):
    """An activation between two layers, so that it sees both signs and large inputs."""
    nodes = [node("MatMul", ["x", "w"], "m"), node(op_type, ["m"], "a", **attrs), node("MatMul", ["a", "v"])]
    return ["N", 5], nodes, [const("w", 5, 6), const("v", 6, 3)]


CASES = {
    "gemm-transB1-alpha-beta": gemm_case(1, 0.5, 2.0, (4,)),
    "gemm-transB0-rowC": gemm_case(0, 1.0, -1.0, (1, 4)),
    "gemm-scalarC": gemm_case(1, 1.0, 1.0, ()),
    "gemm-noC": gemm_case(0, 1.5, 1.0, None),
    "matmul-add-relu": mlp_case(),
    "matmul-left": left_matmul_case(),
    "conv-asym-pads-stride-dilation": conv_case(pads=(0, 1, 2, 1), strides=(1, 2), dilations=(2, 1)),
    "conv-sym-pads": conv_case(pads=(1, 1, 1, 1), strides=(2, 2)),
    "conv-same-upper": conv_case(auto_pad="SAME_UPPER", strides=(2, 2)),
    "conv-same-lower": conv_case(auto_pad="SAME_LOWER", strides=(2, 2)),
    "conv-valid-nobias": conv_case(auto_pad="VALID", bias=False),
    "avgpool": avgpool_case((2, 2), (2, 2)),
    "avgpool-pads": avgpool_case((3, 3), (1, 2), (1, 1, 1, 1), count_include_pad=1),
    "avgpool-asym-pads": avgpool_case((2, 3), (2, 1), (0, 1, 1, 2), count_include_pad=1),
    "global-avgpool": global_avgpool_case(),
    "maxpool": maxpool_case((2, 2), (2, 2)),
    "maxpool-asym-pads-stride-dilation": maxpool_case((3, 2), (2, 1), (0, 1, 2, 1), dilations=(2, 1)),
    "maxpool-same-upper": maxpool_case((3, 3), (2, 2), auto_pad="SAME_UPPER"),
    "maxpool-ceil-mode-full-windows": maxpool_case((3, 2), (2, 2), ceil_mode=1),
    "sigmoid": activation_case("Sigmoid"),
    "tanh": activation_case("Tanh"),
    "leakyrelu": activation_case("LeakyRelu", alpha=0.2),
    "leakyrelu-default-alpha": activation_case("LeakyRelu"),
    "batchnorm-2d": batchnorm_case([1, 3, 5, 5]),
    "batchnorm-1d": batchnorm_case(["N", 6]),
    "pad-opset13": pad_case(13),
    "pad-opset2-attr": pad_case(2),
    "transpose-nhwc": nhwc_case(),
    "reshape-0-minus1": reshape_case([0, -1]),
    "reshape-0-middle": reshape_case([0, 4, 0, -1]),
    "reshape-batch-inferred": reshape_case([-1, 4, 8]),
    "reshape-batch-1": reshape_case([1, 8, -1]),
    "shape-gather-concat-reshape": shape_folding_case(),
    "residual-add": residual_case("Add"),
    "residual-sub": residual_case("Sub"),
    "identity-dropout-neg-cast": identity_case(),
    "constant-nodes": constant_node_case(),
    "squeeze-unsqueeze-opset13": squeeze_case(13),
    "squeeze-unsqueeze-opset11": squeeze_case(11),
    "floor-clip-concat-opset13": quantize_case(13),
    "floor-clip-concat-opset10-attr": quantize_case(10),
}
CASES.update({f"{op}-{'c-x' if first else 'x-c'}-{'x'.join(map(str, shape)) or 'scalar'}":
              arith_case(op, first, shape)
              for op in ("Add", "Sub", "Mul", "Div") for first in (False, True) for shape in ((3, 1, 1), (), (4,))
              if not (op == "Div" and first)})
OPSETS = {"pad-opset2-attr": 10, "squeeze-unsqueeze-opset11": 11, "floor-clip-concat-opset10-attr": 10}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(tmp_path, case):
    input_shape, nodes, inits = CASES[case]
    model = import_and_compare(save(tmp_path, input_shape, nodes, inits, opset=OPSETS.get(case, 13)))
    assert model.batch_dim and model.input_shape == tuple(input_shape[1:])
    assert model.dynamic_batch == (input_shape[0] == "N")


@pytest.mark.parametrize(("case", "expected"), [
    ("matmul-add-relu", [Reshape, Linear, ReLU, Linear]),
    ("gemm-transB1-alpha-beta", [Linear]),
    ("conv-asym-pads-stride-dilation", [Pad, Conv2d, Reshape]),
    ("conv-sym-pads", [Conv2d, Reshape]),
    ("avgpool-asym-pads", [Pad, AvgPool2d, Reshape]),
    ("transpose-nhwc", [Transpose, Conv2d, ReLU, Reshape, Linear]),
    ("batchnorm-2d", [ElementwiseAffine, Reshape]),
    ("identity-dropout-neg-cast", [ElementwiseAffine, ReLU]),
    ("floor-clip-concat-opset13", [ElementwiseAffine, Floor, Clip, Concat, Reshape]),
    ("maxpool-asym-pads-stride-dilation", [MaxPool2d, Reshape]),
    ("sigmoid", [Linear, Sigmoid, Linear]),
    ("tanh", [Linear, Tanh, Linear]),
    ("leakyrelu", [Linear, LeakyReLU, Linear]),
])
def test_ir_ops(tmp_path, case, expected):
    """Asymmetric padding becomes a Pad op; MatMul + Add becomes one Linear; outputs are flattened."""
    input_shape, nodes, inits = CASES[case]
    assert op_types(load_onnx(save(tmp_path, input_shape, nodes, inits))) == expected


def test_affine_folds_into_conv(tmp_path):
    """A BatchNormalization after a Conv folds into the convolution."""
    nodes = [node("Conv", ["x", "w"], "h"), node("BatchNormalization", ["h", "s", "b", "m", "v"], "n"),
             node("Relu", ["n"])]
    inits = [const("w", 3, 2, 3, 3), const("s", 3), const("b", 3), const("m", 3), const("v", 3, positive=True)]
    model = import_and_compare(save(tmp_path, [1, 2, 5, 5], nodes, inits))
    assert op_types(model) == [Conv2d, ReLU, Reshape]


def test_unbatched_input(tmp_path):
    """An input without a batch dim ([5]) is one sample; run() loops over the samples."""
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Relu", ["a"])]
    model = import_and_compare(save(tmp_path, [5], nodes, [const("w", 5, 3), const("b", 3)]))
    assert (model.input_shape, model.batch_dim, model.output_size) == ((5,), False, 3)
    assert op_types(model) == [Linear, ReLU]


def test_run_handles_batches(tmp_path):
    """run() works for fixed batch 1 (looping), dynamic batch, empty batches, and rejects wrong shapes."""
    nodes = [node("Relu", ["x"], "r"), node("Flatten", ["r"])]
    fixed = load_onnx(save(tmp_path, [1, 2, 3], nodes, name="fixed.onnx"))
    dynamic = load_onnx(save(tmp_path, ["batch", 2, 3], nodes, name="dynamic.onnx"))
    x = RNG.standard_normal((7, 2, 3))
    for model in (fixed, dynamic):
        np.testing.assert_allclose(model.run(x), np.maximum(x, 0).reshape(7, 6), rtol=1e-6)
        assert model.run(x[:0]).shape == (0, 6)
        with pytest.raises(ValueError, match="shape"):
            model.run(x[:, :1])
    assert (fixed.dynamic_batch, dynamic.dynamic_batch) == (False, True)


def test_sha256_and_fields(tmp_path):
    import hashlib

    path = save(tmp_path, [1, 4], [node("Relu", ["x"])])
    model = load_onnx(path, check=False)
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (model.input_name, model.output_name, model.path, model.output_size) == ("x", "y", path, 4)


def test_external_data_inside_folder(tmp_path):
    nodes = [node("Gemm", ["x", "w"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [const("w", 30, 40)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    import_and_compare(path)


# ----------------------------------------------------------------------------- torch exports


def export(model: nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], **kwargs)
    return path


def assert_matches_torch(model: nn.Module, imported: OnnxModel) -> None:
    x = torch.rand(6, *imported.input_shape)
    with torch.no_grad():
        np.testing.assert_allclose(imported.network(x.double()).numpy(), model(x).reshape(6, -1).numpy(), rtol=1e-4,
                                   atol=1e-5)


def trained_bn(model: nn.Module, shape) -> nn.Module:
    """Give the BatchNorm layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


def test_torch_mlp_with_normalisation(tmp_path):
    torch.manual_seed(0)
    model = trained_bn(nn.Sequential(Normalize(0.13, 0.31), nn.Flatten(), nn.Linear(16, 10), nn.BatchNorm1d(10),
                                     nn.ReLU(), nn.Linear(10, 3)), (1, 4, 4))
    path = export(model, torch.zeros(1, 1, 4, 4), tmp_path / "mlp.onnx", dynamic_axes={"input": {0: "batch"}})
    imported = import_and_compare(path)
    assert imported.dynamic_batch and imported.input_shape == (1, 4, 4)
    assert_matches_torch(model, imported)
    assert op_types(imported) == [ElementwiseAffine, Reshape, Linear, ReLU, Linear]


@pytest.mark.parametrize("training", ["eval", "preserve"])
def test_torch_cnn_with_batchnorm_and_avgpool(tmp_path, training):
    """BatchNorm2d in eval mode, folded by the exporter (eval) or exported as BatchNormalization (preserve)."""
    torch.manual_seed(0)
    model = trained_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4, 5)), (3, 8, 8))
    mode = torch.onnx.TrainingMode.PRESERVE if training == "preserve" else torch.onnx.TrainingMode.EVAL
    path = export(model, torch.zeros(1, 3, 8, 8), tmp_path / "cnn.onnx", training=mode,
                  do_constant_folding=training == "eval")
    imported = import_and_compare(path)
    assert_matches_torch(model, imported)
    assert op_types(imported) == [Conv2d, ReLU, AvgPool2d, Conv2d, ReLU, Reshape, Linear]


def test_torch_cnn_with_maxpool_and_smooth_activations(tmp_path):
    """nn.MaxPool2d (padding, dilation), LeakyReLU, Tanh and Sigmoid export, import and match torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(2, padding=1),
                          nn.Conv2d(3, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(3, stride=1, dilation=2),
                          nn.Flatten(), nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 3))
    path = export(model, torch.zeros(1, 1, 11, 11), tmp_path / "maxpool.onnx")
    imported = import_and_compare(path)
    assert_matches_torch(model, imported)
    assert op_types(imported) == [Conv2d, LeakyReLU, MaxPool2d, Conv2d, Tanh, MaxPool2d, Reshape, Linear, Sigmoid,
                                  Linear]


def test_maxpool_indices_output_is_rejected(tmp_path):
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], name="pool", kernel_shape=[2, 2]),
             node("Cast", ["i"], to=TensorProto.FLOAT), ]
    path = save(tmp_path, [1, 1, 4, 4], nodes, outputs=("y",))
    assert_import_error(path, "MaxPool", "'pool'")


def test_torch_view_flatten(tmp_path):
    """x.view(x.size(0), -1) exports Shape/Gather/Concat; the constant subgraph folds into a Reshape."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    model = Net()
    path = export(model, torch.zeros(1, 1, 6, 6), tmp_path / "view.onnx", dynamic_axes={"input": {0: "batch"}})
    imported = import_and_compare(path)
    assert_matches_torch(model, imported)


# ----------------------------------------------------------------------------- VNN-COMP networks


@pytest.mark.parametrize(("benchmark", "count"), [("acasxu", 45), ("2022_mnist_fc", 3), ("2022_oval21", 3)])
def test_vnncomp_networks(benchmark, count):
    paths = sorted((VNNCOMP / benchmark / "onnx").glob("*.onnx"))
    if not paths:
        pytest.skip(f"no VNN-COMP networks under {VNNCOMP / benchmark}")
    assert len(paths) == count
    for path in paths:
        assert_matches_onnxruntime(load_onnx(path), n=3)


def test_mnist_fc_ir():
    path = VNNCOMP / "2022_mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing")
    model = load_onnx(path)
    assert op_types(model) == [Reshape, Linear, ReLU, Linear, ReLU, Linear]
    assert (model.input_shape, model.output_size, model.batch_dim) == ((784, 1), 10, True)


# ----------------------------------------------------------------------------- errors


def assert_import_error(path, *fragments: str) -> None:
    with pytest.raises(OnnxImportError) as info:
        load_onnx(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("op_type", "attrs"), [("LpPool", {"kernel_shape": [2, 2]}), ("Softplus", {})])
def test_unsupported_op(tmp_path, op_type, attrs):
    path = save(tmp_path, [1, 1, 4, 4], [helper.make_node(op_type, ["x"], ["y"], name="layer_3", **attrs)])
    assert_import_error(path, f"unsupported ONNX op '{op_type}'", "'layer_3'", "supported: ")


@pytest.mark.parametrize(("input_shape", "nodes", "inits", "fragments"), [
    ([1, 4, 5, 5], [node("Conv", ["x", "w"], group=2)], [const("w", 4, 2, 3, 3)], ["Conv", "Conv_y", "group=2"]),
    (["N", 6], [node("Gemm", ["x", "w"], transA=1)], [const("w", 6, 4)], ["Gemm", "Gemm_y", "transA"]),
    ([1, 1, 4, 4], [node("AveragePool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])], [],
     ["AveragePool", "count_include_pad"]),
    ([1, 1, 5, 5], [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], [],
     ["AveragePool", "ceil_mode"]),
    ([1, 1, 5, 5], [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], [],
     ["MaxPool", "MaxPool_y", "ceil_mode"]),
    ([1, 1, 5, 5], [node("MaxPool", ["x"], kernel_shape=[2, 2], storage_order=1)], [],
     ["MaxPool", "storage_order"]),
    ([1, 2, 3], [node("LeakyRelu", ["x"], alpha=1.5)], [], ["LeakyRelu", "LeakyRelu_y", "alpha=1.5"]),
    ([1, 1, 4, 4], [node("Pad", ["x", "p"], mode="reflect")], [ints("p", [0, 0, 1, 1, 0, 0, 1, 1])],
     ["Pad", "reflect"]),
    ([1, 1, 4, 4], [node("Pad", ["x", "p"])], [ints("p", [0, 1, 0, 0, 0, 1, 0, 0])], ["Pad", "last two dims"]),
    ([1, 2, 3], [node("Transpose", ["x"], perm=[1, 0, 2])], [], ["Transpose", "batch axis"]),
    ([1, 2, 3], [node("Reshape", ["x", "s"])], [ints("s", [2, 3])], ["Reshape", "batch axis"]),
    ([1, 2, 3], [node("Mul", ["x", "x"])], [], ["Mul", "not linear"]),
    ([1, 2, 3], [node("Div", ["c", "x"])], [const("c", 3)], ["Div", "not linear"]),
    ([1, 2, 3], [node("Add", ["x", "c"])], [const("c", 4, 2, 3)], ["Add", "broadcast"]),
    ([1, 2, 3], [node("Squeeze", ["x"])], [], ["Squeeze", "batch"]),
    ([1, 2, 3], [node("Cast", ["x"], "i", to=TensorProto.INT32), node("Cast", ["i"], to=TensorProto.FLOAT)], [],
     ["Cast", "Cast_i", "INT32"]),
    ([1, 2, 3], [node("Flatten", ["x"], axis=0)], [], ["Flatten", "batch axis"]),
])
def test_unsupported_configuration(tmp_path, input_shape, nodes, inits, fragments):
    assert_import_error(save(tmp_path, input_shape, nodes, inits), *fragments)


def test_unknown_attribute_is_rejected(tmp_path):
    bad = helper.make_node("Relu", ["x"], ["y"], name="relu_0", alpha=0.1)
    graph = helper.make_graph([bad], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "attr.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert_import_error(path, "Relu", "relu_0", "attribute 'alpha'")


def test_two_inputs_and_two_outputs(tmp_path):
    path = save(tmp_path, [1, 3], [node("Add", ["x", "x2"])], extra_inputs=["x2"])
    assert_import_error(path, "2 inputs", "'x2'")
    path = save(tmp_path, [1, 3], [node("Relu", ["x"], "y"), node("Neg", ["x"], "z")], outputs=("y", "z"))
    assert_import_error(path, "2 outputs")


def test_dynamic_non_batch_dim(tmp_path):
    assert_import_error(save(tmp_path, ["N", "features"], [node("Relu", ["x"])]), "'x'", "dynamic")


def test_unreadable_files(tmp_path):
    assert_import_error(tmp_path / "missing.onnx", "cannot read ONNX model", "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file, not a protobuf\n")
    assert_import_error(text, "cannot read ONNX model", "notes.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_import_error(empty, "cannot read ONNX model", "not an ONNX model")


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/hostname"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(12, dtype=np.float32).tobytes())
    weight = const("w", 4, 3)
    onnx.external_data_helper.set_external_data(weight, location=location)
    weight.ClearField("raw_data")
    graph = helper.make_graph([node("Gemm", ["x", "w"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert_import_error(path, "outside the model's folder", location)


def test_missing_or_short_external_data(tmp_path):
    weight = const("w", 4, 3)
    onnx.external_data_helper.set_external_data(weight, location="weights.bin")
    weight.ClearField("raw_data")
    graph = helper.make_graph([node("Gemm", ["x", "w"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert_import_error(path, "cannot read ONNX model", "external data")
    (tmp_path / "weights.bin").write_bytes(bytes(8))
    assert_import_error(path, "initializer 'w'")


def test_disagreement_is_detected(tmp_path, monkeypatch):
    """A wrong converter (Relu as the identity) fails the onnxruntime check."""
    monkeypatch.setitem(onnx_import._CONVERTERS, "Relu", onnx_import._identity)
    path = save(tmp_path, [1, 4], [node("Sub", ["x", "c"], "s"), node("Relu", ["s"])],
                [numpy_helper.from_array(np.full(4, 0.5, dtype=np.float32), "c")])
    assert_import_error(path, "disagrees with onnxruntime")
    assert load_onnx(path, check=False).output_size == 4


def test_matmul_on_a_2d_input_per_sample_is_bounded_soundly(tmp_path):
    """x [1, 3, 4] @ W (4, 5) + b is a Linear over the last axis, its bias once per row of x: DeepPoly and Box
    bounds of the flattened output hold at sampled inputs (the bias's constant has one entry per bound)."""
    from nncert.domains import box
    from nncert.domains.deeppoly import DeepPoly

    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Relu", ["a"], "r"),
             node("Flatten", ["r"], "f"), node("Gemm", ["f", "w2", "b2"], transB=1)]
    path = save(tmp_path, [1, 3, 4], nodes, [const("w", 4, 5), const("b", 5), const("w2", 2, 15), const("b2", 2)])
    model = import_and_compare(path)
    net = model.network
    lower, upper = -torch.ones(1, 3, 4, dtype=torch.float64), torch.ones(1, 3, 4, dtype=torch.float64)
    C = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    x = lower + 2 * torch.rand(500, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = net(x)
    for bound in (DeepPoly(net, lower, upper).bound(C), box.bound_linear(net, lower, upper, C)):
        assert bound.shape == (1, 2)
        assert (y >= bound - 1e-9).all()
