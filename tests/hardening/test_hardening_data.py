"""Datasets: deterministic splits, normalisation, the CIFAR pickle reader on files in the real format."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from diehardlab.hardening.data import load_dataset

from diehardlab.errors import DataError


def test_digits_splits_are_disjoint_deterministic_and_normalised():
    tr, va, te = (load_dataset("digits", s) for s in ("train", "val", "test"))
    assert len(tr) + len(va) + len(te) == 1797
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64 and tr.x.shape[1:] == (1, 8, 8)
    assert tr.info.num_classes == 10 and tr.info.in_channels == 1 and tr.info.image_size == 8
    assert abs(float(tr.x.mean())) < 1e-3 and abs(float(tr.x.std()) - 1) < 1e-2
    assert tr.info == te.info  # one normalisation for every split
    assert torch.equal(load_dataset("digits", "val").x, va.x)
    rows = {tuple(r) for r in tr.x.flatten(1)[:, ::3].tolist()}
    assert not any(tuple(r) in rows for r in te.x.flatten(1)[:, ::3].tolist()[:50])


def _write_cifar(folder, n_per_batch: int, cifar100: bool = False) -> tuple[np.ndarray, np.ndarray]:
    # The real layout: a dict with bytes keys, b'data' (N, 3072) uint8 row-major R, G, B planes, labels list.
    rng = np.random.default_rng(0)
    names = ["train", "test"] if cifar100 else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    label_key = b"fine_labels" if cifar100 else b"labels"
    folder.mkdir(parents=True)
    first = None
    for name in names:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if cifar100 else 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), label_key: labels, b"data": data}, f, protocol=2)
        if first is None:
            first = (data, np.array(labels))
    return first


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_pickle_batches(tmp_path, cifar100):
    sub = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
    data, labels = _write_cifar(tmp_path / sub, 20, cifar100)
    name = "cifar100" if cifar100 else "cifar10"
    tr, va, te = (load_dataset(name, s, tmp_path) for s in ("train", "val", "test"))
    n_train = 20 if cifar100 else 100
    assert len(tr) + len(va) == n_train and len(te) == 20
    assert tr.x.shape[1:] == (3, 32, 32) and tr.info.num_classes == (100 if cifar100 else 10)
    # Pixel layout: the first 1024 bytes are the red plane, row-major; undo the normalisation to compare.
    full = torch.cat([tr.x, va.x])
    full_y = torch.cat([tr.y, va.y])
    mean = torch.tensor(tr.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(tr.info.std).view(1, 3, 1, 1)
    pixels = torch.round((full * std + mean) * 255).to(torch.uint8)
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    found = [i for i in range(len(full)) if torch.equal(pixels[i], expected[0])]
    assert found, "first image of the first batch not found"
    assert int(full_y[found[0]]) == int(labels[0])
    assert len(tr) > 0 and len(va) > 0


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, 4)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, f)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", "test", tmp_path)


def test_missing_datasets_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar100", "train")
    with pytest.raises(DataError, match="idx files not found"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def _idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 50), ("t10k", 10)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    tr, va, te = (load_dataset("mnist", s, tmp_path) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (45, 5, 10)
    assert tr.x.shape[1:] == (1, 28, 28)
    (tmp_path / "bad").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / "bad" / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    (tmp_path / "bad" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", "train", tmp_path / "bad")


SUITE_GTSRB = ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669))


def _ppm(path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.mark.parametrize("layout", ["official", "torchvision"])
def test_gtsrb_test_folder_with_its_csv(tmp_path, layout):
    # official archives: GTSRB/Final_Test/Images/*.ppm + GT-final_test.csv beside them;
    # torchvision: gtsrb/GTSRB/Final_Test/Images/*.ppm + gtsrb/GT-final_test.csv
    root = tmp_path / "GTSRB" if layout == "official" else tmp_path / "gtsrb" / "GTSRB"
    images = root / "Final_Test" / "Images"
    rows = [
        ("00000.ppm", (31, 35), (255, 0, 0), 14),
        ("00001.ppm", (60, 52), (0, 255, 0), 1),
        ("00002.ppm", (50, 50), (0, 0, 255), 42),
    ]
    for name, size, colour, _ in rows:
        _ppm(images / name, size, colour)
    csv_path = images / "GT-final_test.csv" if layout == "official" else tmp_path / "gtsrb" / "GT-final_test.csv"
    csv_path.write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
        + "".join(f"{n};{s[0]};{s[1]};5;5;{s[0] - 5};{s[1] - 5};{c}\n" for n, s, _, c in rows)
    )
    ds = load_dataset("gtsrb", "test", tmp_path, SUITE_GTSRB)
    assert ds.x.shape == (3, 3, 50, 50) and ds.y.tolist() == [14, 1, 42] and ds.info.num_classes == 43
    # resized to 50x50; a pure red pixel is (1 - mean) / std in the red channel, (0 - mean) / std elsewhere
    mean, std = (torch.tensor(v).view(3) for v in SUITE_GTSRB)
    want = ((torch.tensor([1.0, 0.0, 0.0]) - mean) / std).float()
    assert torch.equal(ds.x[0, :, 25, 25], want)
    csv_path.unlink()
    from diehardlab.hardening.data import _test_arrays

    _test_arrays.cache_clear()  # the split is cached per (dataset, folder) within a process
    with pytest.raises(DataError, match=r"GT-final_test\.csv"):
        load_dataset("gtsrb", "test", tmp_path, SUITE_GTSRB)


def test_gtsrb_training_folders_and_labels_out_of_range(tmp_path):
    for cls in (0, 2):
        for k in range(5):
            _ppm(
                tmp_path / "GTSRB" / "Final_Training" / "Images" / f"{cls:05d}" / f"{cls:05d}_{k:05d}.ppm",
                (40, 44),
                (cls * 100, 0, 0),
            )
    images = tmp_path / "GTSRB" / "Final_Test" / "Images"
    _ppm(images / "00000.ppm", (30, 30), (0, 0, 0))
    (images / "GT-final_test.csv").write_text("Filename;ClassId\n00000.ppm;2\n")
    tr, va = load_dataset("gtsrb", "train", tmp_path), load_dataset("gtsrb", "val", tmp_path)
    assert len(tr) + len(va) == 10 and sorted(set(torch.cat([tr.y, va.y]).tolist())) == [0, 2]
    assert tr.x.shape[1:] == (3, 50, 50)
    (images / "GT-final_test.csv").write_text("Filename;ClassId\n00000.ppm;43\n")
    with pytest.raises(DataError, match=r"line 2|out of range"):
        load_dataset("gtsrb", "test", tmp_path, SUITE_GTSRB)


def test_cifar100_test_split_alone_with_the_suites_normalisation(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _write_cifar(folder, 6, cifar100=True)
    (folder / "train").unlink()  # a fixed normalisation needs no training data
    with open(folder / "test", "rb") as f:
        batch = pickle.load(f)
    mean, std = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343), (0.2673, 0.2564, 0.2762)
    te = load_dataset("cifar100", "test", tmp_path, (mean, std))
    assert te.info.num_classes == 100 and te.y.tolist() == list(batch[b"fine_labels"])
    # torchvision's ToTensor and Normalize in float32: x / 255, then (x - mean) / std
    x = batch[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
    want = (x - np.float32(mean)[None, :, None, None]) / np.float32(std)[None, :, None, None]
    assert torch.equal(te.x, torch.from_numpy(want))
    with pytest.raises(DataError, match="train"):
        load_dataset("cifar100", "train", tmp_path, (mean, std))


def test_a_folder_of_labelled_images_is_a_test_split(foolbox_images):
    from diehardlab.hardening.zoo import NORMALISATION

    ds = load_dataset("cifar10", "test", foolbox_images, NORMALISATION["cifar10"])
    assert ds.x.shape == (20, 3, 32, 32)
    assert ds.y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]  # cifar10_NN_<label>.png
    c100 = load_dataset("cifar100", "test", foolbox_images, NORMALISATION["cifar100"])
    assert len(c100) == 20 and c100.y[0] == 49 and c100.info.num_classes == 100
    with pytest.raises(DataError, match="test set only"):
        load_dataset("cifar10", "train", foolbox_images, NORMALISATION["cifar10"])
