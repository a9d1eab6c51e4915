"""Tiny fake datasets in the real on-disk layouts (CIFAR pickles, Fashion-MNIST IDX, ImageFolder)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are python-2 era pickles


def write_fake_cifar10(root: str | Path, per_batch: int = 6, test: int = 8, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; returns ``root``."""
    root = Path(root)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)

    def batch(n: int, label: str) -> dict:
        return {
            "batch_label": label,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }

    for i in range(1, 6):
        _dump(d / f"data_batch_{i}", batch(per_batch, f"training batch {i} of 5"))
    _dump(d / "test_batch", batch(test, "testing batch 1 of 1"))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(d / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    return root


def write_fake_cifar100(root: str | Path, train: int = 20, test: int = 10, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}``; returns ``root``."""
    root = Path(root)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    for name, n in (("train", train), ("test", test)):
        _dump(
            d / name,
            {
                "filenames": [f"img_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            },
        )
    _dump(
        d / "meta",
        {
            "fine_label_names": [f"class{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    return root


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_fake_fashion_mnist(root: str | Path, train: int = 50, test: int = 20, gz: bool = True, seed: int = 0) -> Path:
    """The four standard IDX files (gzipped or raw) directly in ``root``; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        files = {
            f"{prefix}-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            f"{prefix}-labels-idx1-ubyte": rng.integers(0, 10, (n,), dtype=np.uint8),
        }
        for name, arr in files.items():
            data = _idx_bytes(arr)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def write_fake_imagefolder(
    root: str | Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 4,
    size: tuple[int, int] = (40, 30),
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<i>.png`` for each split (``splits=()`` writes ``root/<class>/``)."""
    from PIL import Image

    root = Path(root)
    rng = _rng(seed)
    for split in splits or ("",):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root
