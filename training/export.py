"""BatchNorm folding and ONNX export of trained models.

The exported graph takes images in [0, 1] of shape [N, C, H, W] (dynamic N)
and returns logits [N, 10]; the input normalisation stays in the graph (as
Sub / Div by constants) and every BatchNorm is folded into the Conv2d / Linear
before it, so the verifier sees only affine layers and ReLUs.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from nncert.domains.from_torch import batchnorm_affine

OPSET = 17


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """An eval-mode copy of ``model`` (nested Sequentials allowed) with each BatchNorm merged into its predecessor."""
    layers: list[nn.Module] = []
    for layer in _leaves(model):
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if not layers or not isinstance(layers[-1], nn.Conv2d | nn.Linear):
                raise ValueError("BatchNorm can only be folded into a directly preceding Conv2d or Linear")
            layers[-1] = _merge(layers[-1], layer)
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers).eval()


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _merge(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """W' = diag(s) W, b' = s b + t for the BatchNorm's affine map s x + t (running statistics)."""
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        scale, shift = (t.detach() for t in batchnorm_affine(bn))
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(shift)
        merged.weight.copy_(layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        merged.bias = nn.Parameter(bias * scale + shift)
    return merged


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...]) -> None:
    """Write ``model`` (BatchNorm folded) as ONNX, atomically: input 'input' [N, *input_shape], output 'output'."""
    folded = fold_batchnorm(model).cpu()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(folded, (torch.zeros(1, *input_shape),), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    os.replace(tmp, path)
