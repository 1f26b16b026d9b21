"""Image data sets read from local files, never downloaded unless the user asks.

Fashion-MNIST is read from its IDX files (Debian package ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``); CIFAR-10 from its official binary format
(``cifar-10-batches-bin``) or through torchvision's checksummed loader for the python format;
scikit-learn's bundled digits is the small offline fallback used by fast tests.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lohp_cli.errors import DataError

FMNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set in memory.

    ``train_x``/``test_x`` are uint8 arrays ``[N, C, H, W]``; labels are int64 ``[N]``.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A short content hash: labels in full plus a strided sample of pixels."""
        h = hashlib.sha256()
        for arr in (self.train_y, self.test_y, self.train_x[::97], self.test_x[::97]):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read IDX file '{path}': {exc}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not an unsigned-byte IDX file.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - start != count:
        raise DataError(f"IDX file '{path}' is truncated: expected {count} bytes of data.")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _fmnist_dirs(data_root: str | None) -> list[Path]:
    if data_root:
        root = Path(data_root)
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return [Path(d) for d in FMNIST_SYSTEM_DIRS]


def load_fmnist(data_root: str | None = None, download: bool = False) -> ImageData:
    """Load Fashion-MNIST from IDX files (``--data-root``, else the Debian package's directory).

    With ``download=True`` and no local copy, torchvision fetches it into ``data_root``.
    """
    for directory in _fmnist_dirs(data_root):
        paths = {k: _find_idx(directory, v) for k, v in FMNIST_FILES.items()}
        if all(paths.values()):
            arrays = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
            return ImageData(
                name="fmnist",
                train_x=arrays["train_x"][:, None],
                train_y=arrays["train_y"].astype(np.int64),
                test_x=arrays["test_x"][:, None],
                test_y=arrays["test_y"].astype(np.int64),
                num_classes=10,
                source=str(directory),
            )
    if download and data_root:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(data_root, train=True, download=True)
        FashionMNIST(data_root, train=False, download=True)
        return load_fmnist(data_root, download=False)
    where = data_root or ", ".join(FMNIST_SYSTEM_DIRS)
    raise DataError(
        f"Fashion-MNIST not found in {where}. Install it with "
        "'apt-get install dataset-fashion-mnist', "
        "or pass --data-root DIR holding the four IDX files (train-images-idx3-ubyte[.gz], ...)."
    )


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"'{path}' is not a CIFAR-10 binary batch (records of 1 + 3072 bytes).")
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def load_cifar10(data_root: str | None) -> ImageData:
    """Load CIFAR-10 from ``data_root``: the binary version, else torchvision's python version."""
    if not data_root:
        raise DataError("CIFAR-10 needs --data-root DIR (holding cifar-10-batches-bin or -py).")
    root = Path(data_root)
    bin_dir = root / "cifar-10-batches-bin"
    if bin_dir.is_dir():
        train = [
            _read_cifar_bin(bin_dir / f"data_batch_{i}.bin")
            for i in range(1, 6)
            if (bin_dir / f"data_batch_{i}.bin").is_file()
        ]
        test_path = bin_dir / "test_batch.bin"
        if not train or not test_path.is_file():
            raise DataError(f"'{bin_dir}' lacks data_batch_*.bin or test_batch.bin.")
        test_x, test_y = _read_cifar_bin(test_path)
        return ImageData(
            name="cifar10",
            train_x=np.concatenate([t[0] for t in train]),
            train_y=np.concatenate([t[1] for t in train]),
            test_x=test_x,
            test_y=test_y,
            num_classes=10,
            source=str(bin_dir),
        )
    if (root / "cifar-10-batches-py").is_dir():
        # torchvision verifies the official files' checksums before it loads them.
        from torchvision.datasets import CIFAR10

        try:
            tr, te = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
        except RuntimeError as exc:
            raise DataError(f"CIFAR-10 in '{root}' did not load: {exc}") from None
        return ImageData(
            name="cifar10",
            train_x=np.ascontiguousarray(tr.data.transpose(0, 3, 1, 2)),
            train_y=np.asarray(tr.targets, dtype=np.int64),
            test_x=np.ascontiguousarray(te.data.transpose(0, 3, 1, 2)),
            test_y=np.asarray(te.targets, dtype=np.int64),
            num_classes=10,
            source=str(root),
        )
    raise DataError(
        f"CIFAR-10 not found in '{root}': expected cifar-10-batches-bin/ or cifar-10-batches-py/ "
        "(the official archives, unpacked)."
    )


def load_digits_data() -> ImageData:
    """scikit-learn's bundled 8×8 digits (ships with the package), split 2:1 by a fixed rule."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    y = d.target.astype(np.int64)
    test = np.arange(len(y)) % 3 == 2
    return ImageData("digits", x[~test], y[~test], x[test], y[test], 10, "sklearn.datasets")
