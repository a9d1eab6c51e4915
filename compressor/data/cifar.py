"""CIFAR-10 / CIFAR-100 from the python-pickle layout, read with a restricted unpickler.

``cifar-10-batches-py/`` / ``cifar-100-python/`` under ``data_dir`` (or ``data_dir`` itself being that
folder), else under the default root (:mod:`compressor.data.paths`); torchvision downloads with ``download=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compressor.data import paths
from compressor.data.bundle import DataBundle, LoadRequest, in_memory_bundle
from compressor.errors import BadInput, one_line

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "classes": 10,
        "title": "CIFAR-10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "classes": 100,
        "title": "CIFAR-100",
    },
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a CIFAR file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _load_pickle(path: Path) -> Any:
    """The object in ``path``, unpickled by :class:`_SafeUnpickler`."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:  # only numpy arrays and containers get built: any failure is a corrupt file
        raise BadInput(f"cannot read CIFAR file {path}: {one_line(e)[:200]}") from None


def _cifar_dir(root: Path, folder: str, files: list[str]) -> Path | None:
    """``root/folder`` or ``root`` itself, whichever holds all ``files``."""
    for d in (root / folder, root):
        if all((d / f).is_file() for f in files):
            return d
    return None


def _as_array(value: Any, dtype: type, path: Path, key: str) -> np.ndarray:
    """``value`` as a numpy array of ``dtype``; :class:`BadInput` when it holds anything else (strings, ragged
    lists, values out of the type's range)."""
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "iub" or array.dtype == object:
            raise ValueError(f"holds {array.dtype} values, not integers")
        info = np.iinfo(dtype)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise ValueError(f"values outside [{info.min}, {info.max}]")
        return array.astype(dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"{path}: '{key}' is not an array of {np.dtype(dtype).name}: {one_line(e)[:120]}") from None


def _read_cifar_split(d: Path, names: list[str], label_key: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels of the batch files ``names`` in ``d``."""
    xs, ys = [], []
    for name in names:
        entry = _load_pickle(d / name)
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise BadInput(f"{d / name} is not a CIFAR batch (needs 'data' and '{label_key}')")
        x = _as_array(entry["data"], np.uint8, d / name, "data")
        y = _as_array(entry[label_key], np.int64, d / name, label_key)
        if y.ndim != 1 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != y.shape[0]:
            raise BadInput(f"{d / name}: expected data (N, 3072) and N labels, got {x.shape} and {y.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar(kind: str, data_dir: str | None, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str], str]:
    """Train and test tensors, class names and the folder read, for ``cifar10`` / ``cifar100``."""
    info = _CIFAR[kind]
    root = Path(data_dir).expanduser() if data_dir else paths.DEFAULT_ROOT
    needed = info["train"] + info["test"]
    d = _cifar_dir(root, info["folder"], needed)
    if d is None and download:
        try:
            from torchvision import datasets

            cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
            cls(str(root), train=True, download=True)
        except Exception as e:
            raise BadInput(f"{info['title']} download to {root} failed: {one_line(e)[:200]}") from None
        d = _cifar_dir(root, info["folder"], needed)
    if d is None:
        raise BadInput(
            f"{info['title']} not found in {root}: expected {root / info['folder']}/ with "
            f"{', '.join(needed)} (the python version of the dataset); pass its parent directory "
            "as the data directory or enable download"
        )
    xtr, ytr = _read_cifar_split(d, info["train"], info["label_key"])
    xte, yte = _read_cifar_split(d, info["test"], info["label_key"])
    for y, split in ((ytr, "train"), (yte, "test")):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info["classes"]):
            raise BadInput(f"{info['title']} {split} labels out of range 0..{info['classes'] - 1} in {d}")
    classes = [str(i) for i in range(info["classes"])]
    meta_file, meta_key = info["meta"]
    if (d / meta_file).is_file():
        meta = _load_pickle(d / meta_file)
        names = meta.get(meta_key) if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == info["classes"]:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return xtr, ytr, xte, yte, classes, str(d)


def _cifar_spec(canon: str, spec: str, request: LoadRequest) -> DataBundle:
    """``cifar10`` / ``cifar100`` (``canon``): the pickles as in-memory tensors."""
    xtr, ytr, xte, yte, classes, source = _cifar(canon, request.data_dir, request.download)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if canon == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return in_memory_bundle(spec, request, (xtr, ytr, xte, yte), name=canon, classes=classes,
                            num_classes=len(classes), mean=mean, std=std, source=source)  # fmt: skip


def cifar10_spec(spec: str, rest: str, request: LoadRequest) -> DataBundle:
    """``cifar10``."""
    return _cifar_spec("cifar10", spec, request)


def cifar100_spec(spec: str, rest: str, request: LoadRequest) -> DataBundle:
    """``cifar100``."""
    return _cifar_spec("cifar100", spec, request)
