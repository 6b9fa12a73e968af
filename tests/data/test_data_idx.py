"""IDX reader: valid files round-trip; malformed or corrupt files raise DataError naming the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from sgdstab.data.idx import parse_idx, read_idx
from sgdstab.errors import DataError

CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    code = CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_uint8(tmp_path: Path, images: np.ndarray, gz: bool) -> None:
    path = write(tmp_path / ("x-ubyte.gz" if gz else "x-ubyte"), idx_bytes(images), gz)
    out = read_idx(path, ndim=3, dtype=np.dtype(np.uint8))
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)


def test_round_trip_big_endian_wide_types(tmp_path: Path) -> None:
    ints = np.array([[1, 256, -70000], [2**31 - 1, -(2**31), 0]], dtype=np.int32)
    floats = np.array([0.5, -1e300, np.pi])
    np.testing.assert_array_equal(read_idx(write(tmp_path / "i", idx_bytes(ints))), ints)
    out = read_idx(write(tmp_path / "f", idx_bytes(floats)))
    assert out.dtype == np.float64 and out.dtype.isnative
    np.testing.assert_array_equal(out, floats)


def test_truncated_data(tmp_path: Path, images: np.ndarray) -> None:
    path = write(tmp_path / "short-ubyte", idx_bytes(images)[:-1])
    with pytest.raises(DataError, match=r"short-ubyte.*truncated.*5488 data bytes, file has 5487"):
        read_idx(path)


def test_trailing_bytes(tmp_path: Path, images: np.ndarray) -> None:
    path = write(tmp_path / "long-ubyte", idx_bytes(images) + b"\0")
    with pytest.raises(DataError, match=r"long-ubyte.*trailing bytes"):
        read_idx(path)


def test_truncated_header(tmp_path: Path, images: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"h3.*truncated IDX file"):
        read_idx(write(tmp_path / "h3", b"\0\0\x08"))
    with pytest.raises(DataError, match=r"h8.*truncated IDX header.*16 needed for 3 dimensions"):
        read_idx(write(tmp_path / "h8", idx_bytes(images)[:8]))


def test_wrong_magic(tmp_path: Path, images: np.ndarray) -> None:
    data = b"\x01" + idx_bytes(images)[1:]
    with pytest.raises(DataError, match=r"magic-ubyte.*wrong IDX magic number 0x01000803"):
        read_idx(write(tmp_path / "magic-ubyte", data))


def test_unknown_dtype_code(tmp_path: Path, images: np.ndarray) -> None:
    data = bytearray(idx_bytes(images))
    data[2] = 0x07
    with pytest.raises(DataError, match=r"code-ubyte.*unknown IDX dtype code 0x07"):
        read_idx(write(tmp_path / "code-ubyte", bytes(data)))


def test_zero_dimensions() -> None:
    with pytest.raises(DataError, match="0 dimensions"):
        parse_idx(b"\0\0\x08\0", "z")


def test_expected_dimensions_and_dtype(tmp_path: Path, images: np.ndarray) -> None:
    path = write(tmp_path / "img-ubyte", idx_bytes(images))
    with pytest.raises(DataError, match=r"img-ubyte.*3 dimensions but 1 were expected"):
        read_idx(path, ndim=1)
    with pytest.raises(DataError, match=r"img-ubyte.*\(uint8\) but int32 was expected"):
        read_idx(path, dtype=np.dtype(np.int32))


def test_corrupted_gzip_stream(tmp_path: Path, images: np.ndarray) -> None:
    packed = bytearray(gzip.compress(idx_bytes(images), mtime=0))
    middle = len(packed) // 2
    packed[middle : middle + 8] = bytes(b ^ 0xFF for b in packed[middle : middle + 8])
    path = write(tmp_path / "bad-ubyte.gz", bytes(packed))
    with pytest.raises(DataError, match=r"bad-ubyte\.gz.*corrupt or truncated gzip stream"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path: Path, images: np.ndarray) -> None:
    packed = gzip.compress(idx_bytes(images), mtime=0)
    path = write(tmp_path / "cut-ubyte.gz", packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"cut-ubyte\.gz.*corrupt or truncated gzip stream"):
        read_idx(path)


def test_gz_name_without_gzip_content(tmp_path: Path, images: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"plain-ubyte\.gz.*not a gzip file"):
        read_idx(write(tmp_path / "plain-ubyte.gz", idx_bytes(images)))


def test_gzip_content_without_gz_name(tmp_path: Path, images: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"packed-ubyte.*looks gzip-compressed"):
        read_idx(write(tmp_path / "packed-ubyte", idx_bytes(images), gz=True))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read .*nothing-here"):
        read_idx(tmp_path / "nothing-here")
