"""Fashion-MNIST: the bundled subset, the full loader, the Debian files and the regeneration script.

Tests that need Debian's /usr/share/datasets/fashion-mnist skip when it is absent, unless the environment
variable CI is set to a true value (CI installs dataset-fashion-mnist), in which case they fail.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from sgdstab.data import DEFAULT_DATASET, fashion_mnist, load_dataset
from sgdstab.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_fashion_mnist_small.py"
SHIPPED = REPO / "src" / "sgdstab" / "data" / "_files" / "fashion_mnist_small.npz"
LICENSE = SHIPPED.parent / "LICENSE-fashion-mnist.txt"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MEAN, STD = 0.2860, 0.3530


def ci_is_set() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def debian_dir() -> Path:
    """The Debian data folder, or skip (fail under CI) when its files are missing."""
    missing = [name for name in NAMES if not (DEBIAN / name).is_file()]
    if missing:
        message = f"Debian Fashion-MNIST files missing in {DEBIAN}: {missing} (apt-get install dataset-fashion-mnist)"
        if ci_is_set():
            pytest.fail(message + "; CI is set, so this is an error")
        pytest.skip(message)
    return DEBIAN


def read_debian(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels read with gzip + numpy only (independent of the package's IDX reader)."""
    with gzip.open(DEBIAN / f"{prefix}-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(DEBIAN / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    return images, labels


def unnormalize(X: torch.Tensor) -> np.ndarray:
    return ((X.double() * STD + MEAN) * 255).numpy()


def write_idx_set(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = bytes([0, 0, 8, 3]) + struct.pack(">3I", *images.shape) + images.tobytes()
    lab = bytes([0, 0, 8, 1]) + struct.pack(">I", len(labels)) + labels.tobytes()
    for stem, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / stem).write_bytes(data)


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fashion_mnist_small", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the bundled default -------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size"), [("train", 2000), ("test", 1000)])
def test_small_shapes_dtypes_and_raw_range(split: str, size: int) -> None:
    ds = load_dataset(DEFAULT_DATASET, split=split)
    assert DEFAULT_DATASET == "fashion-mnist-small"
    assert ds.X.shape == (size, 1, 28, 28) and ds.X.dtype == torch.float32
    assert ds.Y.shape == (size, 10) and ds.Y.dtype == torch.float32
    assert ds.labels is not None and ds.labels.dtype == torch.int64 and ds.labels.shape == (size,)
    assert set(ds.labels.tolist()) == set(range(10)) and ds.classes == tuple(range(10))
    raw = unnormalize(ds.X)
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-3)
    assert round(raw.min()) == 0 and round(raw.max()) == 255
    torch.testing.assert_close(ds.Y.argmax(1), ds.labels)
    assert "0.2860" in ds.description and "0.3530" in ds.description and "first" in ds.description


def test_small_first_n_is_a_prefix() -> None:
    full = load_dataset("fashion-mnist-small")
    part = load_dataset("fashion-mnist-small", n=300)
    assert torch.equal(part.X, full.X[:300]) and torch.equal(part.labels, full.labels[:300])
    assert part.indices is not None and part.indices.tolist() == list(range(300))
    assert part.description.startswith("Fashion-MNIST train") and "first 300 by file order" in part.description


def test_small_too_many_examples() -> None:
    with pytest.raises(DataError, match=r"n=2001 requested but fashion-mnist-small .* has only 2000 examples"):
        load_dataset("fashion-mnist-small", n=2001)


def test_licence_is_shipped() -> None:
    text = LICENSE.read_text()
    assert "Copyright (c) 2017 Zalando SE" in text and "MIT" in text and "first 2000" in text


def test_shipped_npz_equals_debian_prefix() -> None:
    debian_dir()
    with np.load(SHIPPED, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["test_images", "test_labels", "train_images", "train_labels"]
        for prefix, split, size in (("train", "train", 2000), ("t10k", "test", 1000)):
            images, labels = read_debian(prefix)
            assert npz[f"{split}_images"].dtype == np.uint8 and npz[f"{split}_labels"].dtype == np.uint8
            np.testing.assert_array_equal(npz[f"{split}_images"], images[:size])
            np.testing.assert_array_equal(npz[f"{split}_labels"], labels[:size])


# --- the full data set ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "prefix", "n"), [("train", "train", 2500), ("test", "t10k", 700)])
def test_full_first_n_matches_debian_file_order(split: str, prefix: str, n: int) -> None:
    debian_dir()
    images, labels = read_debian(prefix)
    ds = load_dataset("fashion-mnist", n=n, split=split)
    assert ds.X.shape == (n, 1, 28, 28)
    np.testing.assert_array_equal(np.round(unnormalize(ds.X[:, 0])).astype(np.uint8), images[:n])
    np.testing.assert_array_equal(ds.labels.numpy(), labels[:n])
    expected = (torch.from_numpy(images[:n].astype(np.float32)) / 255 - MEAN) / STD
    torch.testing.assert_close(ds.X[:, 0], expected)


def test_full_size_and_small_agreement() -> None:
    debian_dir()
    full = load_dataset("fashion-mnist", split="test")
    assert full.X.shape == (10000, 1, 28, 28) and full.Y.shape == (10000, 10)
    small = load_dataset("fashion-mnist-small", split="test")
    assert torch.equal(full.X[:1000], small.X) and torch.equal(full.labels[:1000], small.labels)


def test_full_from_data_dir_gz_and_plain(tmp_path: Path) -> None:
    train_images, train_labels = fake_split(30, 1)
    test_images, test_labels = fake_split(12, 2)
    write_idx_set(tmp_path / "fashion-mnist", "train", train_images, train_labels, gz=True)
    write_idx_set(tmp_path / "fashion-mnist", "t10k", test_images, test_labels, gz=False)
    for data_dir in (tmp_path, tmp_path / "fashion-mnist"):
        train = load_dataset("fashion-mnist", data_dir=data_dir)
        test = load_dataset("fashion-mnist", data_dir=str(data_dir), split="test", n=5)
        np.testing.assert_array_equal(np.round(unnormalize(train.X[:, 0])).astype(np.uint8), train_images)
        np.testing.assert_array_equal(train.labels.numpy(), train_labels)
        np.testing.assert_array_equal(np.round(unnormalize(test.X[:, 0])).astype(np.uint8), test_images[:5])


def test_env_var_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = fake_split(20, 3)
    write_idx_set(tmp_path / "data" / "fashion-mnist", "train", images, labels, gz=True)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    monkeypatch.setenv("SGDSTAB_DATA_DIR", str(tmp_path / "data"))
    ds = load_dataset("fashion-mnist", classes=(1, 0))
    assert ds.Y.shape == (4, 1) and ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.Y[:, 0].tolist() == [-1.0, 1.0, -1.0, 1.0]


def test_missing_files_name_every_path_and_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "sys")
    monkeypatch.setenv("SGDSTAB_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", split="test")
    message = str(info.value)
    for folder in (tmp_path / "sys", tmp_path / "env" / "fashion-mnist"):
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            assert str(folder / stem) in message and str(folder / f"{stem}.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data_dir=" in message


def test_missing_files_in_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found; tried: .*train-images-idx3-ubyte.*apt-get install"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_corrupt_file_in_data_dir(tmp_path: Path) -> None:
    images, labels = fake_split(10, 4)
    write_idx_set(tmp_path, "train", images, labels, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*corrupt or truncated gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    images, labels = fake_split(10, 5)
    write_idx_set(tmp_path, "train", images, labels[:9], gz=False)
    with pytest.raises(DataError, match="10 images but labels have shape"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# --- the regeneration script ---------------------------------------------------------------------------


def test_script_check_reproduces_shipped_file_byte_for_byte() -> None:
    source = debian_dir()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--source", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_script_is_deterministic_and_check_detects_mismatch(tmp_path: Path) -> None:
    script = load_script()
    source = tmp_path / "src"
    for prefix, size, seed in (("train", 2000, 6), ("t10k", 1000, 7)):
        write_idx_set(source, prefix, *fake_split(size + 3, seed), gz=True)
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    assert script.main(["--source", str(source), "--out", str(first)]) == 0
    assert script.main(["--source", str(source), "--out", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    with np.load(first, allow_pickle=False) as npz:
        images, labels = fake_split(2003, 6)
        np.testing.assert_array_equal(npz["train_images"], images[:2000])
        np.testing.assert_array_equal(npz["train_labels"], labels[:2000])
        assert npz["test_images"].shape == (1000, 28, 28)
    assert script.main(["--source", str(source), "--out", str(first), "--check"]) == 0
    data = bytearray(first.read_bytes())
    data[-30] ^= 1
    first.write_bytes(bytes(data))
    assert script.main(["--source", str(source), "--out", str(first), "--check"]) == 1
    assert script.main(["--source", str(source), "--out", str(tmp_path / "missing.npz"), "--check"]) == 1
    assert script.main(["--source", str(tmp_path / "nowhere"), "--out", str(first), "--check"]) == 2
