"""MNIST and CIFAR-10 as float tensors in [0, 1], shape (N, C, H, W).

Where the files come from, in order:
1. ``data_dir`` (``--data-dir``) or the ``NNCERT_DATA`` environment variable, in
   torchvision's layout (``MNIST/raw/...``, ``cifar-10-batches-py/...``). For
   CIFAR-10 a folder holding ``cifar10/cifar10-jpeg.tar.gz`` (the lossy JPEG
   re-encoding of the development machines) is read too, with a warning.
2. Otherwise torchvision downloads the dataset into ``./data`` (``download=True``).

Normalisation is not applied here: it is a layer of the model.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("mnist", "cifar10")
MEAN = {"mnist": (0.1307,), "cifar10": (0.4914, 0.4822, 0.4465)}
STD = {"mnist": (0.3081,), "cifar10": (0.2470, 0.2435, 0.2616)}
SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DatasetError(RuntimeError):
    """The dataset is missing or unreadable; the message says how to get it."""


@dataclass
class Dataset:
    x: Tensor  # (N, C, H, W) float32 in [0, 1]
    y: Tensor  # (N,) int64
    name: str
    lossy: bool = False

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, start: int, count: int | None) -> Dataset:
        end = len(self) if count is None else min(len(self), start + count)
        return Dataset(self.x[start:end], self.y[start:end], self.name, self.lossy)


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The explicit data folder (argument, then $NNCERT_DATA), or None for torchvision's download."""
    root = data_dir if data_dir is not None else os.environ.get("NNCERT_DATA")
    return Path(root).expanduser() if root else None


def load_dataset(name: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load ``name`` ('mnist' or 'cifar10'), ``split`` ('train' or 'test')."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'")
    root = data_root(data_dir)
    if root is not None and not root.is_dir():
        raise DatasetError(f"data directory {root} does not exist")
    train = split == "train"
    if name == "mnist":
        return _mnist(root, train)
    return _cifar10(root, train)


def _download_hint(name: str, root: Path | None) -> str:
    where = f"in {root}" if root else "and the download failed"
    layout = "MNIST/raw/*-ubyte" if name == "mnist" else "cifar-10-batches-py/ (or cifar10/cifar10-jpeg.tar.gz)"
    return (f"{name} not found {where}: pass --data-dir (or set NNCERT_DATA) to a folder with {layout}, "
            f"or omit both to let torchvision download it into ./data")


def _mnist(root: Path | None, train: bool) -> Dataset:
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(root or "data"), train=train, download=root is None)
    except (RuntimeError, OSError) as e:
        raise DatasetError(_download_hint("mnist", root)) from e
    return Dataset(ds.data.unsqueeze(1).float() / 255.0, ds.targets.long(), "mnist")


def _cifar10(root: Path | None, train: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    if root is not None:
        tarball = next((p for p in (root / "cifar10" / "cifar10-jpeg.tar.gz", root / "cifar10-jpeg.tar.gz")
                        if p.is_file()), None)
        if tarball is not None and not (root / "cifar-10-batches-py").is_dir():
            return _cifar10_jpeg(tarball, train)
    try:
        ds = CIFAR10(str(root or "data"), train=train, download=root is None)
    except (RuntimeError, OSError) as e:
        raise DatasetError(_download_hint("cifar10", root)) from e
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
    return Dataset(x, torch.tensor(ds.targets, dtype=torch.long), "cifar10")


def _cifar10_jpeg(tarball: Path, train: bool) -> Dataset:
    """CIFAR-10 from the JPEG tarball (train/<class>/NNNN.jpg), cached as .npz beside the user cache.

    Lossy: mean absolute pixel error about 6/255 against the original images.
    """
    split = "train" if train else "test"
    warnings.warn(f"CIFAR-10 from {tarball.name} is a lossy JPEG re-encoding: accuracies are not comparable "
                  "to published CIFAR-10 numbers", stacklevel=3)
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nncert"
    stat = tarball.stat()
    cache = cache_dir / f"cifar10-jpeg-{split}-{stat.st_size}-{int(stat.st_mtime)}.npz"
    if cache.is_file():
        arrays = np.load(cache)
        images, labels = arrays["x"], arrays["y"]
    else:
        images, labels = _read_jpeg_tarball(tarball, split)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x=images, y=labels)
        tmp.replace(cache)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return Dataset(x, torch.from_numpy(labels).long(), "cifar10", lossy=True)


def _read_jpeg_tarball(tarball: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    entries = []
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != split or parts[-2] not in CIFAR10_CLASSES:
                continue
            label = CIFAR10_CLASSES.index(parts[-2])
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                entries.append((label, int(Path(parts[-1]).stem), np.asarray(img.convert("RGB"), dtype=np.uint8)))
    if not entries:
        raise DatasetError(f"no {split} images found in {tarball}")
    # the original global order is lost; interleave classes (image k of every class, then k+1, ...)
    # so that any prefix of the split is class-balanced
    entries.sort(key=lambda e: (e[1], e[0]))
    return np.stack([e[2] for e in entries]), np.array([e[0] for e in entries], dtype=np.int64)


def load_eran_csv(path: str | os.PathLike, shape: tuple[int, ...]) -> Dataset:
    """The ERAN test-set CSV format: label, then pixels 0..255 (HWC order for colour images)."""
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    c, h, w = shape
    x = torch.from_numpy(rows[:, 1:] / 255.0).float().reshape(-1, h, w, c).permute(0, 3, 1, 2).contiguous()
    return Dataset(x, torch.from_numpy(rows[:, 0]).long(), "mnist" if c == 1 else "cifar10")
