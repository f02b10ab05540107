"""Turning user inputs into verification instances.

- L-inf robustness of samples (dataset or ``--inputs`` file): the ball of
  radius eps around each image, clipped to the valid range, in image layout
  (C, H, W); the model is adapted to that layout by optional normalisation
  and a reshape / NHWC transpose in front of it.
- VNN-LIB: one instance per property file, one input box per disjunct, in the
  model's own input layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nncert.domains.network import ElementwiseAffine, Network, Op, Reshape, Transpose, prepend
from nncert.verifier.attack import Oracle
from nncert.verifier.certify import Instance
from nncert.verifier.spec import Property, SpecError, linf_ball, robustness_spec


@dataclass
class Model:
    """A network in the layout the instances use, with its concrete oracle."""

    network: Network
    oracle: Oracle


def adapt_to_images(network: Network, run, image_shape: tuple[int, ...], mean=None, std=None) -> Model:
    """Put optional normalisation and a layout change in front of a model taking ``network.input_shape``.

    ``run`` is the concrete oracle of the original model on numpy arrays in
    its own layout (e.g. onnxruntime). The returned network and oracle take
    images (N, *image_shape) in [0, 1].
    """
    front: list[Op] = []
    if mean is not None or std is not None:
        front.append(normalization(image_shape, mean, std))
    model_shape = network.input_shape
    if math.prod(model_shape) != math.prod(image_shape):
        raise SpecError(f"input shape mismatch: samples have shape {image_shape} but the model expects "
                        f"{model_shape}")
    if len(image_shape) == 3 and image_shape[0] > 1 and tuple(model_shape) == (*image_shape[1:], image_shape[0]):
        front.append(Transpose((1, 2, 0)))  # channels-last model
    elif tuple(model_shape) != tuple(image_shape):
        front.append(Reshape(tuple(model_shape)))
    if not front:
        return Model(network, lambda x: torch.as_tensor(run(x.detach().cpu().numpy())).to(x))
    for op in front:
        op.to(network.device, network.dtype)
    prefix = Network.chain(tuple(image_shape), front)

    def oracle(x: Tensor) -> Tensor:
        return torch.as_tensor(run(prefix(x.detach().cpu().to(torch.float64)).numpy())).to(x)

    return Model(prepend(front, network, tuple(image_shape)), oracle)


def normalization(shape: tuple[int, ...], mean, std) -> ElementwiseAffine:
    """``(x - mean) / std`` per channel (dim 0 of ``shape``) or with scalars."""
    channels = shape[0] if len(shape) == 3 else 1
    mean = torch.as_tensor(mean if mean is not None else [0.0], dtype=torch.float64).flatten()
    std = torch.as_tensor(std if std is not None else [1.0], dtype=torch.float64).flatten()
    for name, values in (("mean", mean), ("std", std)):
        if values.numel() not in (1, channels):
            raise SpecError(f"--{name} needs 1 or {channels} values, got {values.numel()}")
    if bool((std <= 0).any()):
        raise SpecError("--std values must be positive")
    view = (-1, 1, 1) if len(shape) == 3 and channels > 1 else ()
    mean, std = (mean.reshape(view), std.reshape(view)) if view else (mean[0], std[0])
    return ElementwiseAffine(1.0 / std, -mean / std)


class LinfInstances(Sequence[Instance]):
    """One robustness instance per sample, built when it is accessed: x (N, *image_shape) in [clip_min,
    clip_max], labels y (N,). A long run holds the images, not N boxes.

    ``keep`` (K,) selects the samples (positions in x); an instance's index is ``first_index`` + its position.
    """

    def __init__(self, x: Tensor, y: Tensor, eps: float, n_classes: int, clip_min: float = 0.0,
                 clip_max: float = 1.0, first_index: int = 0, keep: Tensor | None = None):
        self.x, self.y, self.eps, self.n_classes = x, y, eps, n_classes
        self.clip, self.first_index = (clip_min, clip_max), first_index
        self.keep = torch.arange(len(x)) if keep is None else keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._select(self.keep[i])
        k = int(self.keep[i])
        lower, upper = linf_ball(self.x[k], self.eps, *self.clip)
        label = int(self.y[k])
        return Instance(self.first_index + k, [Property(lower, upper, robustness_spec(label, self.n_classes))],
                        label=label, clean=self.x[k])

    def without(self, done: set[int]) -> LinfInstances:
        """The instances whose index is not in ``done`` (still lazy)."""
        indices = (self.keep + self.first_index).tolist()
        return self._select(self.keep[[i not in done for i in indices]])

    def _select(self, keep: Tensor) -> LinfInstances:
        return LinfInstances(self.x, self.y, self.eps, self.n_classes, *self.clip, self.first_index, keep)


def linf_instances(x: Tensor, y: Tensor, eps: float, n_classes: int, clip_min: float = 0.0,
                   clip_max: float = 1.0, first_index: int = 0) -> LinfInstances:
    """One robustness instance per sample: x (N, *image_shape) in [clip_min, clip_max], labels y (N,)."""
    return LinfInstances(x, y, eps, n_classes, clip_min, clip_max, first_index)


def remaining(instances: Sequence[Instance], done: set[int]) -> Sequence[Instance]:
    """The instances whose index is not in ``done`` (a lazy sequence stays lazy)."""
    if isinstance(instances, LinfInstances):
        return instances.without(done)
    return [inst for inst in instances if inst.index not in done]


def vnnlib_instance(props: list[Property], input_shape: tuple[int, ...], n_outputs: int) -> Instance:
    """The instance of one VNN-LIB file: its flat input boxes reshaped to the model's input layout, in float64
    (the pipeline rounds them outward to the precision it computes in)."""
    shaped = []
    for p in props:
        if p.lower.numel() != math.prod(input_shape) or p.output.C.shape[1] != n_outputs:
            raise SpecError(f"VNN-LIB declares {p.lower.numel()} inputs and {p.output.C.shape[1]} outputs, the "
                            f"model has {math.prod(input_shape)} and {n_outputs}")
        shaped.append(Property(p.lower.reshape(input_shape).double(), p.upper.reshape(input_shape).double(),
                               p.output.to(dtype=torch.float64)))
    return Instance(0, shaped)


def load_inputs_npz(path: str | os.PathLike, clip_min: float, clip_max: float) -> tuple[Tensor, Tensor]:
    """Samples from an .npz with arrays x (N, *shape) in [clip_min, clip_max] and integer labels y (N,)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise SpecError(f"{path}: expected arrays 'x' and 'y', found {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read inputs {path}: {e}") from None
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise SpecError(f"{path}: x must be numeric and y integer, got {x.dtype} and {y.dtype}")
    if x.ndim < 2 or y.shape != (x.shape[0],):
        raise SpecError(f"{path}: x must be (N, *shape) and y (N,), got {x.shape} and {y.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise SpecError(f"{path}: x contains NaN or infinite values")
    if x.min() < clip_min or x.max() > clip_max:
        raise SpecError(f"{path}: x outside the valid range [{clip_min}, {clip_max}] "
                        f"(found [{x.min():.4g}, {x.max():.4g}]); pass --clip-min/--clip-max")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
