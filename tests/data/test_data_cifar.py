"""CIFAR-10 in the binary and python layouts, written tiny by the test; hostile pickles are refused."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdstab.data import Dataset, load_dataset
from sgdstab.data.cifar import RestrictedUnpickler, read_py_batch
from sgdstab.errors import DataError

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).reshape(1, 3, 1, 1)
PER_BATCH, TEST_SIZE = 4, 6


def make_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[0] = 0
    images[-1] = 255
    return images, rng.integers(0, 10, n).astype(np.int64)


def batches(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {f"data_batch_{i}": make_records(PER_BATCH, seed + i) for i in range(1, 6)}
    out["test_batch"] = make_records(TEST_SIZE, seed + 99)
    return out


def write_bin(folder: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    for name, (images, labels) in data.items():
        records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes str and bytes as Python 2 ``str`` (BINSTRING) and names numpy's
    ``_reconstruct`` by its old module, like the cPickle files of the CIFAR-10 python distribution."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: object) -> bytes:
    import io

    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def batch_dict(name: str, images: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "batch_label": f"{name} of 5",
        "labels": [int(v) for v in labels],
        "data": images.reshape(len(images), 3072),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }


def write_py(folder: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    for name, (images, labels) in data.items():
        (folder / name).write_bytes(py2_pickle(batch_dict(name, images, labels)))
    return folder


def expected(data: dict[str, tuple[np.ndarray, np.ndarray]], split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return (np.concatenate([data[n][0] for n in names]), np.concatenate([data[n][1] for n in names]))


def unnormalize(X: torch.Tensor) -> np.ndarray:
    return ((X.double() * STD.double() + MEAN.double()) * 255).numpy()


def check(ds: Dataset, images: np.ndarray, labels: np.ndarray) -> None:
    assert ds.X.shape == (len(images), 3, 32, 32) and ds.X.dtype == torch.float32
    assert ds.Y.shape == (len(images), 10) and ds.labels.dtype == torch.int64
    raw = unnormalize(ds.X)
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-3)
    np.testing.assert_array_equal(np.round(raw).astype(np.uint8), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    torch.testing.assert_close(ds.X, (torch.from_numpy(images).float() / 255 - MEAN) / STD)


def test_py2_style_pickle_looks_like_the_original(tmp_path: Path) -> None:
    data = py2_pickle(batch_dict("b", *make_records(2, 0)))
    assert data.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert b"_codecs" not in data and b"\x8c" not in data  # no Python 3 bytes/unicode opcodes' helpers


@pytest.mark.parametrize("layout", ["bin", "py"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_layouts_read_exactly(tmp_path: Path, layout: str, split: str) -> None:
    data = batches(10)
    (write_bin if layout == "bin" else write_py)(tmp_path / f"cifar-10-batches-{layout}", data)
    ds = load_dataset("cifar10", data_dir=tmp_path, split=split)
    check(ds, *expected(data, split))
    assert f"CIFAR-10 {split} ({layout} batches" in ds.description
    assert "(0.4914, 0.4822, 0.4465)" in ds.description and "(0.2470, 0.2435, 0.2616)" in ds.description


def test_data_dir_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    data = batches(20)
    folder = write_py(tmp_path / "cifar-10-batches-py", data)
    check(load_dataset("cifar10", data_dir=folder, n=7), *(a[:7] for a in expected(data, "train")))


def test_binary_preferred_when_both_present(tmp_path: Path) -> None:
    binary, python = batches(30), batches(40)
    write_bin(tmp_path / "cifar-10-batches-bin", binary)
    write_py(tmp_path / "cifar-10-batches-py", python)
    ds = load_dataset("cifar10", data_dir=tmp_path, split="test")
    check(ds, *expected(binary, "test"))
    assert "bin batches" in ds.description


def test_classes_and_stratified_subset(tmp_path: Path) -> None:
    data = batches(50)
    write_bin(tmp_path / "cifar-10-batches-bin", data)
    images, labels = expected(data, "train")
    a, b = (int(c) for c in np.unique(labels)[:2])
    ds = load_dataset("cifar10", data_dir=tmp_path, classes=(b, a))
    keep = np.isin(labels, [a, b])
    check_images = images[keep]
    np.testing.assert_array_equal(np.round(unnormalize(ds.X)).astype(np.uint8), check_images)
    assert torch.equal(ds.Y[:, 0], torch.where(ds.labels == b, 1.0, -1.0))


def test_data_dir_is_required() -> None:
    with pytest.raises(DataError, match="cifar10 needs data_dir="):
        load_dataset("cifar10")


def test_missing_batch_is_named(tmp_path: Path) -> None:
    folder = write_bin(tmp_path / "cifar-10-batches-bin", batches(60))
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"bin layout in .*cifar-10-batches-bin lacks data_batch_4\.bin"):
        load_dataset("cifar10", data_dir=tmp_path)
    load_dataset("cifar10", data_dir=tmp_path, split="test")  # the test batch is still there


def test_empty_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar10 train batches not found under"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")


def test_binary_size_must_be_a_multiple_of_the_record(tmp_path: Path) -> None:
    folder = write_bin(tmp_path / "cifar-10-batches-bin", batches(70))
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"test_batch\.bin: size 18437 bytes is not a positive multiple of the 3073"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")


def test_python_batch_with_wrong_content(tmp_path: Path) -> None:
    folder = write_py(tmp_path / "cifar-10-batches-py", batches(80))
    bad = batch_dict("test_batch", *make_records(3, 1))
    bad["data"] = bad["data"].astype(np.int16)
    (folder / "test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(DataError, match=r"test_batch: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")
    (folder / "test_batch").write_bytes(py2_pickle(batch_dict("t", *make_records(3, 1)))[:-100])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 python batch"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")


def test_python3_protocol4_pickle_is_accepted(tmp_path: Path) -> None:
    images, labels = make_records(3, 2)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": images.reshape(3, -1), b"labels": labels.tolist()}, protocol=4))
    got_images, got_labels = read_py_batch(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


class Hostile:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class HostileEval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return (eval, (self.code,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pickle_is_refused_and_never_run(tmp_path: Path, protocol: int) -> None:
    folder = write_py(tmp_path / "cifar-10-batches-py", batches(90))
    marker = tmp_path / "pwned"
    payload = batch_dict("test_batch", *make_records(2, 3))
    payload["batch_label"] = Hostile(f"touch {marker}")
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DataError, match=rf"refusing to unpickle {os.system.__module__}\.system from .*test_batch"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps(HostileEval(f"open({str(marker)!r}, 'w')"), protocol=protocol))
    with pytest.raises(DataError, match=r"refusing to unpickle (builtins|__builtin__)\.eval"):
        load_dataset("cifar10", data_dir=tmp_path, split="test")
    assert not marker.exists()


def test_restricted_unpickler_allows_only_numpy_reconstruction() -> None:
    assert set(RestrictedUnpickler.ALLOWED) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
