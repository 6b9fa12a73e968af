#!/usr/bin/env python3
"""Build ``src/sgdstab/data/_files/fashion_mnist_small.npz`` byte for byte from the official IDX files.

The file holds the first 2000 training and first 1000 test images of Fashion-MNIST (uint8 ``(N, 28, 28)``)
and their uint8 labels, as arrays ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.
It is a zip of ``.npy`` members like ``np.savez_compressed`` writes, but with fixed timestamps
(1980-01-01), permissions, creator system, member order and deflate level, so rebuilding it from the same
source files gives the same bytes (given the same zlib, which stock zlib 1.2.x/1.3.x is).

Usage:
    scripts/make_fashion_mnist_small.py [--source DIR] [--out FILE] [--check]

``--source`` defaults to Debian's /usr/share/datasets/fashion-mnist (``apt-get install
dataset-fashion-mnist``); ``--check`` rebuilds in memory and compares with ``--out`` instead of writing:
exit 0 when identical, 1 when different or missing, 2 when the source files cannot be read.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "sgdstab").is_dir():
    sys.path.insert(0, str(REPO / "src"))

from sgdstab.data.idx import read_idx  # noqa: E402
from sgdstab.errors import DataError  # noqa: E402

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO / "src" / "sgdstab" / "data" / "_files" / "fashion_mnist_small.npz"
SIZES = {"train": 2000, "test": 1000}
STEMS = {"train": "train", "test": "t10k"}
DATE_TIME = (1980, 1, 1, 0, 0, 0)
EXTERNAL_ATTR = 0o100644 << 16  # regular file, rw-r--r--
COMPRESS_LEVEL = 9


def source_file(source: Path, stem: str) -> Path:
    """``stem.gz`` if present, else the plain ``stem``."""
    gz = source / f"{stem}.gz"
    return gz if gz.is_file() else source / stem


def load_arrays(source: Path) -> dict[str, np.ndarray]:
    """The four arrays, in member order, cut from the full official files (which are validated whole)."""
    arrays: dict[str, np.ndarray] = {}
    for split, size in SIZES.items():
        stem = STEMS[split]
        images = read_idx(source_file(source, f"{stem}-images-idx3-ubyte"), ndim=3, dtype=np.dtype(np.uint8))
        labels = read_idx(source_file(source, f"{stem}-labels-idx1-ubyte"), ndim=1, dtype=np.dtype(np.uint8))
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) < size:
            raise DataError(f"{source}: unexpected {split} shapes {images.shape} / {labels.shape}")
        arrays[f"{split}_images"] = np.ascontiguousarray(images[:size])
        arrays[f"{split}_labels"] = np.ascontiguousarray(labels[:size])
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz`` (zip of ``NAME.npy`` members, deflated) that ``np.load`` reads."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the host
            info.external_attr = EXTERNAL_ATTR
            zf.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL)
    return buffer.getvalue()


def describe_difference(built: bytes, shipped: bytes) -> str:
    """Explain a byte mismatch: different arrays, or same arrays with a different compressor."""
    try:
        with np.load(io.BytesIO(shipped), allow_pickle=False) as old, np.load(io.BytesIO(built)) as new:
            same = sorted(old.files) == sorted(new.files) and all(np.array_equal(old[k], new[k]) for k in new.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"shipped file is not a readable npz ({exc})"
    if same:
        return "arrays are identical but the bytes differ: the zlib/zipfile implementation differs"
    return "array contents differ"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the four IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="npz file to write (or compare)")
    parser.add_argument("--check", action="store_true", help="compare a rebuild with --out; exit 1 on mismatch")
    args = parser.parse_args(argv)
    try:
        built = npz_bytes(load_arrays(args.source))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.is_file():
            print(f"MISMATCH: {args.out} does not exist", file=sys.stderr)
            return 1
        shipped = args.out.read_bytes()
        if shipped != built:
            print(
                f"MISMATCH: {args.out} ({len(shipped)} bytes) differs from a rebuild from {args.source} "
                f"({len(built)} bytes): {describe_difference(built, shipped)}",
                file=sys.stderr,
            )
            return 1
        print(f"OK: {args.out} matches a rebuild from {args.source} ({len(built)} bytes)")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=args.out.parent, prefix=".tmp-", delete=False) as tmp:
        tmp.write(built)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, args.out)
    print(f"wrote {args.out} ({len(built)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
