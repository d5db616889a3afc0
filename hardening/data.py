"""Datasets as in-memory tensors: digits, fashion-mnist, mnist, cifar10, cifar100, gtsrb.

``load_dataset(name, split)`` returns normalised float32 NCHW images and int64 labels. Normalisation uses the
per-channel mean and std of the training split, so every split of a dataset shares the same constants
(``info.mean`` / ``info.std``; the harness applies them to its own inputs); ``normalisation=(mean, std)`` gives
fixed constants instead, such as the benchmark suite's (then pixels are divided by 255 and normalised in float32
exactly as torchvision's ToTensor and Normalize do, and a test split needs no training data).

Splits are deterministic: ``val`` is a fixed 10 % of the training data (a permutation with a fixed seed,
independent of the training seed), ``train`` the rest; ``test`` is the dataset's own test set
(digits, which has none, keeps a fixed 20 % aside).

Sources: ``digits`` ships with scikit-learn (imported only here, lazily); ``fashion-mnist`` / ``mnist`` read the
idx files (``.gz`` or plain) from ``data_dir`` or Debian's ``/usr/share/datasets/<name>``; ``cifar10`` /
``cifar100`` read the python pickle batches (``cifar-10-batches-py/`` / ``cifar-100-python/`` or their files
directly) from ``data_dir``, with an unpickler that accepts numpy arrays and nothing else; ``gtsrb`` reads the
German Traffic Sign benchmark's folders (test: ``GTSRB/Final_Test/Images/*.ppm`` with ``GT-final_test.csv``,
``;``-separated with a ``ClassId`` column, as the official archives or torchvision's ``gtsrb/`` lay them out;
train: one folder per class under ``GTSRB/Final_Training/Images`` or ``GTSRB/Training``), every image resized
to 50x50 (bilinear, as the suite's ``Resize([50, 50])``).

A folder of labelled image files is a test set too: ``data_dir`` holding ``<dataset>_<NN>_<label>.<ext>`` files
(as the foolbox wheel ships 20 real test images per dataset: ``cifar10_00_3.png``) is the test split of that
dataset, in the order of NN.
"""

from __future__ import annotations

import csv
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

NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "gtsrb")
NUM_CLASSES = {"cifar100": 100, "gtsrb": 43}
IMAGE_EXTENSIONS = (".png", ".ppm", ".jpg", ".jpeg", ".bmp")
GTSRB_SIZE = 50
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
    "gtsrb": (
        "unpack GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip (and GTSRB_Final_Training_Images.zip for "
        "training) from https://benchmark.ini.rub.de/gtsrb_dataset.html into --data-dir, so that it holds "
        "GTSRB/Final_Test/Images/*.ppm and GT-final_test.csv (torchvision's gtsrb/ folder works too)"
    ),
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


def read_images(files: list[Path], size: int | None = None) -> np.ndarray:
    """Image files as uint8 (N, C, H, W): RGB, or one channel for grey images; resized (bilinear) to ``size``."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if im.mode in ("L", "I", "F", "1", "I;16") else "RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{f}: not a readable image ({exc})") from None
        arrays.append(a.reshape(a.shape[0], a.shape[1], -1).transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{files[0].parent}: images of different sizes {sorted(shapes)[:3]}; they need one size")
    return np.stack(arrays) if arrays else np.zeros((0, 3, size or 1, size or 1), np.uint8)


def _stem_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def labelled_image_files(folder: Path, name: str) -> list[tuple[int, int, Path]]:
    """``<dataset>_<NN>_<label>.<ext>`` files of dataset ``name`` in ``folder``: (NN, label, path), by NN."""
    if not folder.is_dir():
        return []
    found = []
    for f in folder.iterdir():
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        parts = f.stem.rsplit("_", 2)
        if len(parts) == 3 and _stem_key(parts[0]) == _stem_key(name) and parts[1].isdigit() and parts[2].isdigit():
            found.append((int(parts[1]), int(parts[2]), f))
    return sorted(found)


def _image_folder_test(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    files = labelled_image_files(folder, name)
    x = read_images([f for _, _, f in files], GTSRB_SIZE if name == "gtsrb" else None)
    return x, np.array([label for _, label, _ in files], dtype=np.int64)


def _gtsrb_roots(data_dir: Path) -> list[Path]:
    return [data_dir / "gtsrb" / "GTSRB", data_dir / "GTSRB", data_dir]


def _gtsrb_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    for root in _gtsrb_roots(data_dir):
        images = root / "Final_Test" / "Images"
        if not images.is_dir():
            continue
        candidates = [
            data_dir / "gtsrb" / "GT-final_test.csv",
            images / "GT-final_test.csv",
            root / "GT-final_test.csv",
            root / "Final_Test" / "GT-final_test.csv",
            data_dir / "GT-final_test.csv",
        ]
        gt = next((c for c in candidates if c.is_file()), None)
        if gt is None:
            raise DataError(
                f"dataset 'gtsrb': {images} has the test images but no GT-final_test.csv with their labels beside "
                f"it ({', '.join(str(c) for c in candidates[:3])}); {HOW_TO_GET['gtsrb']}"
            )
        files, labels = [], []
        try:
            text = gt.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{gt}: cannot read the GTSRB labels ({exc})") from None
        reader = csv.DictReader(io.StringIO(text), delimiter=";", skipinitialspace=True)
        if not reader.fieldnames or not {"Filename", "ClassId"} <= set(reader.fieldnames):
            raise DataError(f"{gt}: line 1: need the columns Filename and ClassId (';'-separated), as GTSRB's CSV")
        for row in reader:
            line = reader.line_num
            try:
                label = int(row["ClassId"])
            except (TypeError, ValueError):
                raise DataError(f"{gt}: line {line}: ClassId {row.get('ClassId')!r} is not a class number") from None
            f = images / str(row["Filename"]).strip()
            if not f.is_file():
                raise DataError(f"{gt}: line {line}: image {f.name} is not in {images}")
            files.append(f)
            labels.append(label)
        return read_images(files, GTSRB_SIZE), np.array(labels, dtype=np.int64)
    raise DataError(f"dataset 'gtsrb': no Final_Test/Images folder under {data_dir}; {HOW_TO_GET['gtsrb']}")


def _gtsrb_train(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    for root in _gtsrb_roots(data_dir):
        for base in (root / "Final_Training" / "Images", root / "Training"):
            classes = sorted(d for d in base.iterdir() if d.is_dir() and d.name.isdigit()) if base.is_dir() else []
            if not classes:
                continue
            files, labels = [], []
            for d in classes:
                for f in sorted(d.iterdir()):
                    if f.suffix.lower() in IMAGE_EXTENSIONS:
                        files.append(f)
                        labels.append(int(d.name))
            return read_images(files, GTSRB_SIZE), np.array(labels, dtype=np.int64)
    raise DataError(f"dataset 'gtsrb': no training folders (GTSRB/Final_Training/Images/000NN) under {data_dir}")


def _need_dir(name: str, data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs --data-dir; {HOW_TO_GET[name]}")
    return data_dir


def _test_only(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The test split alone (no training data needed) when the dataset's layout allows it, else None."""
    path = Path(data_dir) if data_dir else None
    if path is not None and labelled_image_files(path, name):
        return _image_folder_test(name, path)
    if name == "gtsrb":
        return _gtsrb_test(_need_dir(name, path))
    if name in ("cifar10", "cifar100"):
        folder = _need_dir(name, path)
        sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        folder = folder / sub if (folder / sub).is_dir() else folder
        test = folder / ("test_batch" if name == "cifar10" else "test")
        if test.is_file():
            return _cifar_arrays(test, "labels" if name == "cifar10" else "fine_labels")
    return None


@lru_cache(maxsize=4)
def _raw(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    path = Path(data_dir) if data_dir else None
    if path is not None and labelled_image_files(path, name):
        raise DataError(
            f"{path}: a folder of labelled {name} images is a test set only; it has no training split (and no "
            "normalisation of its own: a checkpoint with fixed normalisation, such as one from 'diehard zoo import', "
            "reads it)"
        )
    if name == "digits":
        xtr, ytr, xte, yte = _digits_dataset()
    elif name in ("fashion-mnist", "mnist"):
        xtr, ytr, xte, yte = _idx_dataset(name, path)
    elif name == "gtsrb":
        xte, yte = _gtsrb_test(_need_dir(name, path))
        xtr, ytr = _gtsrb_train(_need_dir(name, path))
    else:
        xtr, ytr, xte, yte = _cifar_dataset(name, path)
    num_classes = NUM_CLASSES.get(name, 10)
    _check_labels(name, np.concatenate([ytr, yte]), num_classes)
    return xtr, ytr, xte, yte, num_classes


def _check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
    bad = y[(y < 0) | (y >= num_classes)][:3].tolist()
    if bad:
        raise DataError(f"dataset {name!r}: labels out of range 0..{num_classes - 1}: {bad}")


@lru_cache(maxsize=2)
def _test_arrays(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    arrays = _test_only(name, data_dir)
    if arrays is not None:
        _check_labels(name, arrays[1], NUM_CLASSES.get(name, 10))
    return arrays


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Dataset:
    """The ``split`` of dataset ``name`` as normalised float32 NCHW tensors; ``DataError`` if it is missing.

    ``normalisation``: fixed (mean, std) per channel instead of the training split's statistics.
    """
    if name not in NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    key = str(data_dir) if data_dir else None
    if normalisation is not None:
        mean = np.asarray(normalisation[0], dtype=np.float32)
        std = np.asarray(normalisation[1], dtype=np.float32)
        test = _test_arrays(name, key) if split == "test" else None
        if test is not None:
            x, y = test
            num_classes = NUM_CLASSES.get(name, 10)
        else:
            xtr, ytr, xte, yte, num_classes = _raw(name, key)
            order = np.random.default_rng(SPLIT_SEED).permutation(len(ytr))
            n_val = round(VAL_FRACTION * len(ytr))
            pick = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}
            x, y = (xte, yte) if split == "test" else (xtr[pick[split]], ytr[pick[split]])
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise DataError(f"normalisation has {len(mean)} channels, dataset {name!r} has {x.shape[1]}")
        # ToTensor then Normalize, as torchvision computes them: x / 255, then (x - mean) / std, in float32.
        xf = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
        xf = (xf - mean[None, :, None, None]) / std[None, :, None, None]
        # the constants as given (they are applied in float32 above)
        given = tuple(float(v) for v in normalisation[0]), tuple(float(v) for v in normalisation[1])
        info = DatasetInfo(name, int(xf.shape[1]), num_classes, int(xf.shape[2]), *given)
        return Dataset(
            torch.from_numpy(np.ascontiguousarray(xf, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
            info,
            split,
        )
    xtr, ytr, xte, yte, num_classes = _raw(name, key)
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


def fixed_normalisation(config: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The fixed (mean, std) a checkpoint's config.json records for its inputs (``diehard zoo import`` and the
    suite's recipes), or None when the inputs are normalised with the training split's statistics."""
    norm = config.get("normalisation")
    if isinstance(norm, dict) and norm.get("fixed"):
        return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    return None
