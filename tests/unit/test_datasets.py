"""Local data set readers: IDX, CIFAR-10 binary, digits (lohp_cli/tasks/datasets.py).

Every data set here is written by the test itself, a few bytes each.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lohp_cli.errors import DataError
from lohp_cli.tasks import datasets
from lohp_cli.tasks.datasets import (
    FMNIST_FILES,
    ImageData,
    load_cifar10,
    load_digits_data,
    load_fmnist,
    read_idx,
)
from tests.conftest import needs_fmnist


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def fake_fmnist(rng: np.random.Generator, n_train: int = 30, n_test: int = 20, side: int = 6):
    """Tiny IDX-shaped arrays: images [N, side, side] uint8, labels cycling over 10 classes."""
    return {
        "train_x": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_y": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }


def write_fmnist(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in FMNIST_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])


# ---- read_idx ----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    arr=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5)),
    gz=st.booleans(),
)
def test_read_idx_round_trip(
    tmp_path_factory: pytest.TempPathFactory, arr: np.ndarray, gz: bool
) -> None:
    d = tmp_path_factory.mktemp("idx")
    path = write_idx(d / ("a.idx.gz" if gz else "a.idx"), arr)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_idx_plain_and_gz_agree(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    a = read_idx(write_idx(tmp_path / "x-idx3-ubyte", arr))
    b = read_idx(write_idx(tmp_path / "x-idx3-ubyte.gz", arr))
    assert a.shape == (3, 4, 5)
    np.testing.assert_array_equal(a, arr)
    np.testing.assert_array_equal(b, arr)


@pytest.mark.parametrize(
    ("name", "payload", "match"),
    [
        ("truncated", idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "truncated"),
        ("too-long", idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00", "truncated"),
        ("header-only", bytes([0, 0, 8, 3, 0, 0]), "truncated"),
        ("foreign", b"PK\x03\x04 this is a zip file", "not an unsigned-byte IDX"),
        ("float-idx", bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x00" * 4, "not an unsigned-byte IDX"),
        ("empty", b"", "not an unsigned-byte IDX"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path: Path, name: str, payload: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataError, match=match):
        read_idx(path)


def test_read_idx_rejects_bad_gzip(tmp_path: Path) -> None:
    not_gz = tmp_path / "a.gz"
    not_gz.write_bytes(idx_bytes(np.zeros(4, np.uint8)))  # plain bytes under a .gz name
    with pytest.raises(DataError, match="Cannot read IDX file"):
        read_idx(not_gz)
    cut = tmp_path / "b.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))[:-12])
    with pytest.raises(DataError, match="Cannot read IDX file"):
        read_idx(cut)
    with pytest.raises(DataError, match="Cannot read IDX file"):
        read_idx(tmp_path / "missing.gz")


# ---- Fashion-MNIST -----------------------------------------------------------------------------
@pytest.mark.parametrize("sub", [".", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_load_fmnist_from_data_root(tmp_path: Path, sub: str, gz: bool) -> None:
    arrays = fake_fmnist(np.random.default_rng(0))
    write_fmnist(tmp_path / sub, arrays, gz=gz)
    data = load_fmnist(str(tmp_path))
    assert data.name == "fmnist" and data.num_classes == 10
    assert Path(data.source) == (tmp_path / sub)
    assert data.train_x.shape == (30, 1, 6, 6) and data.test_x.shape == (20, 1, 6, 6)
    assert data.image_shape == (1, 6, 6)
    np.testing.assert_array_equal(data.train_x[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(data.test_x[:, 0], arrays["test_x"])
    assert data.train_y.dtype == np.int64 and data.test_y.dtype == np.int64
    np.testing.assert_array_equal(data.train_y, arrays["train_y"])
    np.testing.assert_array_equal(data.test_y, arrays["test_y"])


def test_load_fmnist_missing_mentions_apt_get(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_fmnist(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_load_fmnist_incomplete_set_is_missing(tmp_path: Path) -> None:
    write_fmnist(tmp_path, fake_fmnist(np.random.default_rng(0)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_fmnist(str(tmp_path))


def test_load_fmnist_system_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FMNIST_SYSTEM_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fmnist(None)


def test_load_fmnist_system_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = fake_fmnist(np.random.default_rng(1))
    write_fmnist(tmp_path / "sys", arrays)
    monkeypatch.setattr(datasets, "FMNIST_SYSTEM_DIRS", (str(tmp_path / "sys"),))
    data = load_fmnist(None)
    np.testing.assert_array_equal(data.train_x[:, 0], arrays["train_x"])


def test_load_fmnist_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    write_fmnist(tmp_path, fake_fmnist(np.random.default_rng(0)), gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_fmnist(str(tmp_path))


@needs_fmnist
def test_real_fmnist() -> None:
    data = load_fmnist(None)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.train_y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.test_y), np.full(10, 1000))


# ---- CIFAR-10 binary ---------------------------------------------------------------------------
def cifar_records(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` records of 1 label byte + 3072 pixel bytes (R plane, G plane, B plane)."""
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, 10, n)
    return rec


def write_cifar(root: Path, sizes: tuple[int, ...] = (2, 3, 1, 2, 2), test: int = 3):
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    batches = []
    for i, n in enumerate(sizes, start=1):
        rec = cifar_records(rng, n)
        (d / f"data_batch_{i}.bin").write_bytes(rec.tobytes())
        batches.append(rec)
    test_rec = cifar_records(rng, test)
    (d / "test_batch.bin").write_bytes(test_rec.tobytes())
    return np.concatenate(batches), test_rec


def test_load_cifar10_binary(tmp_path: Path) -> None:
    train, test = write_cifar(tmp_path)
    data = load_cifar10(str(tmp_path))
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.image_shape == (3, 32, 32)
    np.testing.assert_array_equal(data.train_y, train[:, 0].astype(np.int64))
    np.testing.assert_array_equal(data.test_y, test[:, 0].astype(np.int64))
    assert data.train_y.dtype == np.int64
    # Channel planes in order, each row-major 32×32; batches concatenated in order 1..5.
    for i in range(10):
        for c in range(3):
            plane = train[i, 1 + 1024 * c : 1 + 1024 * (c + 1)].reshape(32, 32)
            np.testing.assert_array_equal(data.train_x[i, c], plane)
    assert data.train_x[0, 1, 0, 5] == train[0, 1 + 1024 + 5]
    assert data.train_x[9, 2, 31, 31] == train[9, 3072]


def test_load_cifar10_some_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    for i in (2, 3, 4, 5):
        (tmp_path / "cifar-10-batches-bin" / f"data_batch_{i}.bin").unlink()
    assert load_cifar10(str(tmp_path)).train_x.shape == (2, 3, 32, 32)


def test_load_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --data-root"):
        load_cifar10(None)
    with pytest.raises(DataError, match="CIFAR-10 not found in"):
        load_cifar10(str(tmp_path / "nothing"))
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a CIFAR-10 binary batch"):
        load_cifar10(str(tmp_path))
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="not a CIFAR-10 binary batch"):
        load_cifar10(str(tmp_path))


def test_load_cifar10_without_test_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="lacks data_batch_"):
        load_cifar10(str(tmp_path))


# ---- digits and ImageData ----------------------------------------------------------------------
def test_digits() -> None:
    data = load_digits_data()
    n = len(data.train_y) + len(data.test_y)
    assert n == 1797
    assert len(data.test_y) == len(range(2, n, 3))  # every third example is a test example
    assert data.train_x.shape == (len(data.train_y), 1, 8, 8) and data.train_x.dtype == np.uint8
    assert data.train_x.max() == 255 and data.train_x.min() == 0  # 0..16 scaled by 16, clipped
    assert set(np.unique(data.train_y)) == set(range(10)) == set(np.unique(data.test_y))
    assert data.num_classes == 10 and data.image_shape == (1, 8, 8)


def test_fingerprint_stable_and_sensitive() -> None:
    data = load_digits_data()
    fp = data.fingerprint()
    assert len(fp) == 16 and fp == load_digits_data().fingerprint()
    y = data.train_y.copy()
    y[5] = (y[5] + 1) % 10
    changed = ImageData(data.name, data.train_x, y, data.test_x, data.test_y, 10, data.source)
    assert changed.fingerprint() != fp
    x = data.train_x.copy()
    x[0, 0, 4, 4] ^= 1  # row 0 is in the strided sample
    assert (
        ImageData(data.name, x, data.train_y, data.test_x, data.test_y, 10, "").fingerprint() != fp
    )
