"""BatchNorm folding preserves the function; the ONNX file computes what the torch model does."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nncert.training.export import export_onnx, fold_batchnorm
from nncert.training.models import build_model


def _trained_like(name: str, dataset: str = "mnist") -> nn.Sequential:
    """A model whose BatchNorms have non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    model = build_model(name, dataset, widths=(20, 10))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", ["cnn5", "cnn7"])
def test_fold_batchnorm_preserves_function(name):
    model = _trained_like(name)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_leaves_the_model_untouched():
    model = _trained_like("cnn5").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name,dataset", [("cnn5", "mnist"), ("fc", "mnist"), ("cnn3", "cifar10")])
def test_onnx_matches_torch(tmp_path, name, dataset):
    model = _trained_like(name, dataset)
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, shape)
    graph = onnx.load(str(path)).graph
    assert {n.op_type for n in graph.node} <= {"Sub", "Div", "Conv", "Relu", "Flatten", "Gemm", "Reshape"}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == list(shape)
    session = ort.InferenceSession(str(path))
    x = torch.rand(5, *shape)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
