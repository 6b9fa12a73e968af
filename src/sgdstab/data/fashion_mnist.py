"""Fashion-MNIST: the bundled small subset and the full data set from IDX files.

Normalization (both variants): ``x = (pixel / 255 - 0.2860) / 0.3530`` with fixed constants, the mean and
standard deviation of all pixels of the 60000 official training images (0.28604, 0.35302). Inputs are
``(n, 1, 28, 28)`` float32, labels are the original ids 0..9 (0 T-shirt/top ... 9 ankle boot).

Fashion-MNIST is Copyright (c) 2017 Zalando SE, MIT licence (see ``_files/LICENSE-fashion-mnist.txt``).
"""

from __future__ import annotations

import os
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from sgdstab.data.classification import RawImages, standardize
from sgdstab.data.idx import read_idx
from sgdstab.errors import DataError

MEAN = 0.2860
STD = 0.3530
NORMALIZATION = f"pixels/255 then standardized with fixed mean {MEAN:.4f} std {STD:.4f}"

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming a folder whose ``fashion-mnist`` subfolder holds the IDX files.
ENV_VAR = "SGDSTAB_DATA_DIR"
INSTALL_HINT = (
    "install them with `apt-get install dataset-fashion-mnist`, or pass data_dir= a folder with the "
    "four *-ubyte.gz files"
)

#: split -> (images file stem, labels file stem); each may be gzipped (``.gz``) or plain.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SMALL_RESOURCE = "_files/fashion_mnist_small.npz"
#: Sizes of the bundled subset: the first 2000 training and first 1000 test images of the official files.
SMALL_SIZES = {"train": 2000, "test": 1000}


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(m, 1, 28, 28)`` -> float32 ``(pixel/255 - MEAN) / STD``."""
    return standardize(images, 255.0, (MEAN,), (STD,))


def candidate_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / "fashion-mnist"]
    dirs = [SYSTEM_DIR]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser() / "fashion-mnist")
    return dirs


def find_files(split: str, data_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """Locate the (images, labels) IDX files of ``split``; plain files are preferred over ``.gz``."""
    tried: list[Path] = []
    for folder in candidate_dirs(data_dir):
        found: list[Path] = []
        for stem in FILES[split]:
            options = [folder / stem, folder / f"{stem}.gz"]
            tried.extend(options)
            hit = next((p for p in options if p.is_file()), None)
            if hit is not None:
                found.append(hit)
        if len(found) == 2:
            return found[0], found[1]
    raise DataError(f"Fashion-MNIST {split} files not found; tried: {', '.join(map(str, tried))}; {INSTALL_HINT}")


def _check_pair(images: np.ndarray, labels: np.ndarray, source: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{source}: images must have shape (N, 28, 28), got {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{source}: the files hold no images; they are truncated or not Fashion-MNIST")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{source}: {images.shape[0]} images but labels have shape {labels.shape}")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{source}: label {int(labels.max())} out of range 0..9")


def load_full(split: str, data_dir: str | os.PathLike[str] | None) -> RawImages:
    """Read the full Fashion-MNIST ``split`` from IDX files (see :func:`find_files`)."""
    images_path, labels_path = find_files(split, data_dir)
    images = read_idx(images_path, ndim=3, dtype=np.dtype(np.uint8))
    labels = read_idx(labels_path, ndim=1, dtype=np.dtype(np.uint8))
    _check_pair(images, labels, f"{images_path} / {labels_path}")
    return RawImages(images[:, None], labels.astype(np.int64), f"Fashion-MNIST {split} ({images_path.parent})")


def load_small(split: str) -> RawImages:
    """Read the bundled subset: first 2000 train / first 1000 test images of the official files."""
    resource = resources.files("sgdstab.data").joinpath(SMALL_RESOURCE)
    try:
        with resources.as_file(resource) as path, np.load(path, allow_pickle=False) as npz:
            images = np.asarray(npz[f"{split}_images"])
            labels = np.asarray(npz[f"{split}_labels"])
    except FileNotFoundError as exc:
        raise DataError(
            f"bundled file sgdstab/data/{SMALL_RESOURCE} is missing from the installation; "
            "regenerate it with scripts/make_fashion_mnist_small.py or reinstall sgdstab"
        ) from exc
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"bundled file sgdstab/data/{SMALL_RESOURCE} is unreadable ({exc}); regenerate it with "
            "scripts/make_fashion_mnist_small.py or reinstall sgdstab"
        ) from exc
    source = f"bundled {SMALL_RESOURCE}"
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or images.shape[0] != SMALL_SIZES[split]:
        raise DataError(
            f"{source}: expected uint8 arrays with {SMALL_SIZES[split]} {split} examples, got "
            f"{images.dtype} {images.shape} / {labels.dtype} {labels.shape}"
        )
    _check_pair(images, labels, source)
    size = SMALL_SIZES[split]
    return RawImages(
        images[:, None],
        labels.astype(np.int64),
        f"Fashion-MNIST {split} (bundled subset: first {size} of the official {split} file)",
    )
