"""Datasets as in-memory tensors: digits, fashion-mnist, mnist, cifar10, cifar100.

``load_dataset(name, split)`` returns normalised float32 NCHW images and int64 labels. Normalisation uses the
per-channel mean and std of the training split, so every split of a dataset shares the same constants
(``info.mean`` / ``info.std``; the harness applies them to its own inputs).

Splits are deterministic: ``val`` is a fixed 10 % of the training data (a permutation with a fixed seed,
independent of the training seed), ``train`` the rest; ``test`` is the dataset's own test set
(digits, which has none, keeps a fixed 20 % aside).

Sources: ``digits`` ships with scikit-learn (imported only here, lazily); ``fashion-mnist`` / ``mnist`` read the
idx files (``.gz`` or plain) from ``data_dir`` or Debian's ``/usr/share/datasets/<name>``; ``cifar10`` /
``cifar100`` read the python pickle batches (``cifar-10-batches-py/`` / ``cifar-100-python/`` or their files
directly) from ``data_dir``, with an unpickler that accepts numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diehardlab.errors import DataError

NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100")
SPLITS = ("train", "val", "test")
SPLIT_SEED = 20250101  # fixed: the validation split must not move with the training seed
VAL_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2

HOW_TO_GET = {
    "fashion-mnist": (
        "install Debian's package (apt install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist) "
        "or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist into --data-dir"
    ),
    "mnist": (
        "put train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
        "t10k-labels-idx1-ubyte(.gz) of MNIST into --data-dir (or /usr/share/datasets/mnist)"
    ),
    "cifar10": (
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it and pass the folder that "
        "holds cifar-10-batches-py/ as --data-dir"
    ),
    "cifar100": (
        "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, unpack it and pass the folder that "
        "holds cifar-100-python/ as --data-dir"
    ),
    "digits": "install scikit-learn (pip install 'diehardlab[train]'): the digits dataset ships with it",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Dataset:
    x: torch.Tensor  # float32 (N, C, H, W), normalised
    y: torch.Tensor  # int64 (N,)
    info: DatasetInfo
    split: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


# ---------------------------------------------------------------- raw readers (uint8/float images, labels)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the idx file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} but holds {body.size} bytes (truncated download?)")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_dataset(name: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folders = [data_dir, data_dir / name] if data_dir else [Path("/usr/share/datasets") / name]
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for folder in folders:
        paths = [_find(folder, s) for s in stems]
        if all(paths):
            xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
            return xtr[:, None], ytr, xte[:, None], yte
    where = " or ".join(str(f) for f in folders)
    raise DataError(f"dataset {name!r}: idx files not found in {where}; {HOW_TO_GET[name]}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles of dicts of numpy arrays; refuse any other global (no code execution)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a CIFAR batch is a dict, found {type(obj).__name__}")
    # Keys are bytes in the original (python 2) files, str if re-pickled by python 3.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_cifar_batch(path)
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(f"{path}: CIFAR batch has no {key!r} entry (keys: {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: expected data (N, 3072) and N labels, found {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_dataset(name: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs --data-dir; {HOW_TO_GET[name]}")
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    folder = data_dir / sub if (data_dir / sub).is_dir() else data_dir
    if name == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = [folder / "test_batch"], "labels"
    else:
        train_files, test_files, label_key = [folder / "train"], [folder / "test"], "fine_labels"
    missing = [str(p) for p in train_files + test_files if not p.is_file()]
    if missing:
        raise DataError(f"dataset {name!r}: missing {', '.join(missing)}; {HOW_TO_GET[name]}")
    tr = [_cifar_arrays(p, label_key) for p in train_files]
    te = [_cifar_arrays(p, label_key) for p in test_files]
    return (
        np.concatenate([a for a, _ in tr]),
        np.concatenate([b for _, b in tr]),
        np.concatenate([a for a, _ in te]),
        np.concatenate([b for _, b in te]),
    )


def _digits_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"dataset 'digits': {HOW_TO_GET['digits']}") from exc
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> 0..1, shape (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED + 1).permutation(len(y))
    n_test = round(DIGITS_TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@lru_cache(maxsize=4)
def _raw(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    path = Path(data_dir) if data_dir else None
    if name == "digits":
        xtr, ytr, xte, yte = _digits_dataset()
    elif name in ("fashion-mnist", "mnist"):
        xtr, ytr, xte, yte = _idx_dataset(name, path)
    else:
        xtr, ytr, xte, yte = _cifar_dataset(name, path)
    num_classes = {"cifar100": 100}.get(name, 10)
    labels = np.concatenate([ytr, yte])
    bad = labels[(labels < 0) | (labels >= num_classes)][:3].tolist()
    if bad:
        raise DataError(f"dataset {name!r}: labels out of range 0..{num_classes - 1}: {bad}")
    return xtr, ytr, xte, yte, num_classes


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> Dataset:
    """The ``split`` of dataset ``name`` as normalised float32 NCHW tensors; ``DataError`` if it is missing."""
    if name not in NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    xtr, ytr, xte, yte, num_classes = _raw(name, str(data_dir) if data_dir else None)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ytr))
    n_val = round(VAL_FRACTION * len(ytr))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    scale = 1.0 if xtr.dtype == np.float32 else 1.0 / 255.0
    train_x = xtr[train_idx].astype(np.float32) * scale
    mean = train_x.mean(axis=(0, 2, 3))
    std = train_x.std(axis=(0, 2, 3)) + 1e-6
    if split == "train":
        x, y = train_x, ytr[train_idx]
    elif split == "val":
        x, y = xtr[val_idx].astype(np.float32) * scale, ytr[val_idx]
    else:
        x, y = xte.astype(np.float32) * scale, yte
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    info = DatasetInfo(
        name=name,
        in_channels=int(x.shape[1]),
        num_classes=num_classes,
        image_size=int(x.shape[2]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return Dataset(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        info=info,
        split=split,
    )
