"""CIFAR-10 from a user-supplied folder, in either standard layout.

* binary (preferred when both are complete): ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
  ``test_batch.bin``; each record is 1 label byte followed by 3072 pixel bytes (1024 R, 1024 G, 1024 B,
  each 32x32 row-major).
* python: ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``, pickled dicts with ``b'data'``
  (uint8 ``N x 3072``, same pixel order) and ``b'labels'`` (list of int). They are read with a restricted
  unpickler that admits only numpy's array-reconstruction globals, so a hostile pickle cannot run code.

``data_dir`` may be the folder containing ``cifar-10-batches-bin``/``-py`` or one of those folders itself.
Normalization: ``x = (pixel / 255 - mean[c]) / std[c]`` per channel with the fixed published constants
mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616). Inputs are ``(n, 3, 32, 32)`` float32.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sgdstab.data.classification import RawImages, standardize
from sgdstab.errors import DataError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NORMALIZATION = (
    f"pixels/255 then standardized per channel with fixed mean ({', '.join(f'{m:.4f}' for m in MEAN)})"
    f" std ({', '.join(f'{s:.4f}' for s in STD)})"
)

RECORD_BYTES = 1 + 3072
LAYOUTS = {
    "bin": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    "py": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
}


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(m, 3, 32, 32)`` -> float32 per-channel ``(pixel/255 - MEAN[c]) / STD[c]``."""
    return standardize(images, 255.0, MEAN, STD)


def find_batches(split: str, data_dir: str | os.PathLike[str] | None) -> tuple[str, list[Path]]:
    """Return the layout (``"bin"`` or ``"py"``) and batch files of ``split``; binary wins when both exist."""
    if data_dir is None:
        raise DataError(
            "cifar10 needs data_dir=: a folder containing cifar-10-batches-bin/ or "
            "cifar-10-batches-py/ (from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"cifar10 data_dir {root} is not a folder")
    problems: list[str] = []
    for layout, (folder_name, train_files, test_files) in LAYOUTS.items():
        names = train_files if split == "train" else test_files
        folders = [root] if root.name == folder_name else [root / folder_name, root]
        for folder in folders:
            paths = [folder / name for name in names]
            missing = [p for p in paths if not p.is_file()]
            if not missing:
                return layout, paths
            if len(missing) < len(paths) or folder.name == folder_name:
                problems.append(f"{layout} layout in {folder} lacks {', '.join(p.name for p in missing)}")
    detail = "; ".join(problems) if problems else "neither cifar-10-batches-bin/ nor cifar-10-batches-py/ found"
    raise DataError(f"cifar10 {split} batches not found under {root}: {detail}")


def read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch into uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{path}: size {len(raw)} bytes is not a positive multiple of the {RECORD_BYTES}-byte "
            "CIFAR-10 record (1 label byte + 3072 pixel bytes); the file is truncated or not a "
            "CIFAR-10 binary batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 python batch needs (numpy array rebuilding)."""

    ALLOWED: ClassVar[dict[tuple[str, str], Callable[[], Any]]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        factory = self.ALLOWED.get((module, name))
        if factory is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.source}: CIFAR-10 python batches "
                "only need numpy array reconstruction; the file is corrupted or malicious"
            )
        return factory()


def read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python (pickled) batch with :class:`RestrictedUnpickler`; validate and reshape."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # any unpickling failure of a corrupt file
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with keys b'data' and b'labels', got {keys}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {got}")
    if (
        not isinstance(labels, list | np.ndarray)
        or len(labels) != data.shape[0]
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels)
    ):
        raise DataError(f"{path}: b'labels' must be {data.shape[0]} integers")
    bad = next((int(v) for v in labels if not 0 <= v <= 9), None)  # before int64 conversion: 2**70 overflows
    if bad is not None:
        raise DataError(f"{path}: label {bad} out of range 0..9")
    return data.reshape(-1, 3, 32, 32).copy(), np.asarray(labels, dtype=np.int64)


def load(split: str, data_dir: str | os.PathLike[str] | None) -> RawImages:
    """Read CIFAR-10 ``split`` (``"train"``: the five data batches in order; ``"test"``: the test batch)."""
    layout, paths = find_batches(split, data_dir)
    reader = read_bin_batch if layout == "bin" else read_py_batch
    parts = [reader(p) for p in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    for path, (_, lab) in zip(paths, parts, strict=True):
        if lab.size and (lab.min() < 0 or lab.max() > 9):
            raise DataError(f"{path}: label {int(lab.max() if lab.max() > 9 else lab.min())} out of range 0..9")
    return RawImages(images, labels, f"CIFAR-10 {split} ({layout} batches in {paths[0].parent})")
