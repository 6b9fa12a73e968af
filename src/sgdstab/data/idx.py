"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed, with full validation.

An IDX file is: two zero bytes, a dtype code byte, a dimension-count byte, one big-endian uint32 per
dimension, then the array in C order, big-endian. Every deviation (wrong magic, unknown dtype code, wrong
number of dimensions, too few or too many data bytes, corrupt gzip stream) raises :class:`DataError`
naming the file and the problem.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from sgdstab.errors import DataError

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file, transparently decompressing it when its name ends in ``.gz``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix != ".gz":
        return raw
    if not raw.startswith(_GZIP_MAGIC):
        raise DataError(f"{path}: not a gzip file (name ends in .gz but the gzip magic bytes are missing)")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc}); re-download or reinstall the file") from exc


def parse_idx(data: bytes, source: str, *, ndim: int | None = None, dtype: np.dtype | None = None) -> np.ndarray:
    """Parse IDX bytes into a native-endian numpy array, validating header and size.

    Args:
        data: the uncompressed file content.
        source: file name used in error messages.
        ndim: required number of dimensions, or None for any.
        dtype: required element type (compared ignoring byte order), or None for any.
    """
    if len(data) < 4:
        raise DataError(f"{source}: truncated IDX file ({len(data)} bytes, the header alone needs at least 4)")
    zero1, zero2, code, nd = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0:
        hint = " (it looks gzip-compressed: name it *.gz)" if data.startswith(_GZIP_MAGIC) else ""
        raise DataError(f"{source}: wrong IDX magic number 0x{data[:4].hex()} (must start with two zero bytes){hint}")
    if code not in IDX_DTYPES:
        raise DataError(
            f"{source}: unknown IDX dtype code 0x{code:02x} (known: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})"
        )
    file_dtype = IDX_DTYPES[code]
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise DataError(
            f"{source}: IDX dtype code 0x{code:02x} ({file_dtype.name}) but {np.dtype(dtype).name} was expected"
        )
    if nd == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    if ndim is not None and nd != ndim:
        raise DataError(f"{source}: IDX header declares {nd} dimensions but {ndim} were expected")
    header_len = 4 + 4 * nd
    if len(data) < header_len:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, {header_len} needed for {nd} dimensions)")
    shape = struct.unpack(f">{nd}I", data[4:header_len])
    expected = math.prod(shape) * file_dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{source}: {what}: header declares shape {shape} of {file_dtype.name} = {expected} data "
            f"bytes, file has {actual}"
        )
    array = np.frombuffer(data, dtype=file_dtype, offset=header_len).reshape(shape)
    return array.astype(file_dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None, dtype: np.dtype | None = None) -> np.ndarray:
    """Read and validate an IDX file (``*.gz`` files are decompressed); see :func:`parse_idx`."""
    return parse_idx(read_file_bytes(path), str(path), ndim=ndim, dtype=dtype)
