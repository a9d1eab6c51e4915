"""Fashion-MNIST from its IDX files (``train-images-idx3-ubyte[.gz]`` etc.), read with numpy+gzip.

Looked for in ``data_dir``, else in the Debian package's folder and the default root (both in
:mod:`compressor.data.paths`); torchvision downloads only with ``download=True``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from compressor.data import paths
from compressor.data.bundle import DataBundle, LoadRequest, in_memory_bundle
from compressor.errors import BadInput, one_line
from compressor.runtime.memory import check_fits

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


_FMNIST_FILES = {
    "train_images": ("train", "images", 3),
    "train_labels": ("train", "labels", 1),
    "test_images": ("t10k", "images", 3),
    "test_labels": ("t10k", "labels", 1),
}


def _idx_candidates(prefix: str, kind: str, ndim: int) -> list[str]:
    """The file names one IDX file goes by (both spellings, gzipped first)."""
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [n + ext for n in names for ext in (".gz", "")]


def _find_fmnist_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` or its usual sub-folders, or ``None``."""
    for d in (directory, directory / "FashionMNIST" / "raw", directory / "fashion-mnist"):
        found = {}
        for key, (prefix, kind, ndim) in _FMNIST_FILES.items():
            for name in _idx_candidates(prefix, kind, ndim):
                if (d / name).is_file():
                    found[key] = d / name
                    break
        if len(found) == len(_FMNIST_FILES):
            return found
    return None


def _read_idx(path: Path) -> np.ndarray:
    """The uint8 array in an IDX file (gzipped or not); :class:`BadInput` when malformed. The header is read
    first: the array it announces must fit in memory, and no more than that is decompressed (a gzip bomb stops)."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
                raise BadInput(f"{path} is not an IDX file of unsigned bytes")
            head = f.read(4 * magic[3])
            if len(head) < 4 * magic[3]:
                raise BadInput(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{magic[3]}I", head)
            check_fits(f"IDX file {path} (header dims {dims})", math.prod(dims))
            raw = f.read(math.prod(dims) + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"cannot read IDX file {path}: {one_line(e)}") from None
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != math.prod(dims):
        raise BadInput(f"{path}: IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


_FMNIST_ARRAYS: dict[tuple, dict[str, np.ndarray]] = {}  # the last dataset read (loads take ~0.5 s)


def _load_fashion_mnist_arrays(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The four arrays, checked, from the cache when the files are unchanged."""
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    if key not in _FMNIST_ARRAYS:
        arrays = {k: _read_idx(p) for k, p in files.items()}
        for split in ("train", "test"):
            x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise BadInput(
                    f"Fashion-MNIST {split} files disagree: images {x.shape}, labels {y.shape} "
                    f"({files[f'{split}_images']})"
                )
            if y.size and int(y.max()) > 9:
                raise BadInput(f"Fashion-MNIST labels out of range 0..9 in {files[f'{split}_labels']}")
        _FMNIST_ARRAYS.clear()  # keep one dataset only
        _FMNIST_ARRAYS[key] = arrays
    return _FMNIST_ARRAYS[key]


def _fashion_mnist(data_dir: str | None, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """Train and test tensors and the folder read (``data_dir``, else the default locations)."""
    dirs = [Path(data_dir).expanduser()] if data_dir else [paths.FASHION_MNIST_DEBIAN_DIR, paths.DEFAULT_ROOT]
    for d in dirs:
        files = _find_fmnist_files(d)
        if files is not None:
            break
    else:
        if download:
            root = dirs[0] if data_dir else paths.DEFAULT_ROOT
            try:
                from torchvision.datasets import FashionMNIST

                FashionMNIST(str(root), train=True, download=True)
                FashionMNIST(str(root), train=False, download=True)
            except Exception as e:
                raise BadInput(f"Fashion-MNIST download to {root} failed: {one_line(e)[:200]}") from None
            files = _find_fmnist_files(root)
        if files is None:
            where = dirs[0]
            expected = ", ".join(n + "[.gz]" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"))
            expected += ", t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
            raise BadInput(
                f"Fashion-MNIST not found in {where}: expected {expected}; install the Debian package "
                f"{paths.FASHION_MNIST_DEBIAN_PACKAGE}, point the data directory at those files, or enable download"
            )
    arrays = _load_fashion_mnist_arrays(files)
    as_t = torch.from_numpy
    return (
        as_t(arrays["train_images"].copy()).unsqueeze(1),
        as_t(arrays["train_labels"].astype(np.int64)),
        as_t(arrays["test_images"].copy()).unsqueeze(1),
        as_t(arrays["test_labels"].astype(np.int64)),
        str(files["train_images"].parent),
    )


def fashion_mnist_spec(spec: str, rest: str, request: LoadRequest) -> DataBundle:
    """``fashion-mnist``: the IDX files as in-memory tensors."""
    xtr, ytr, xte, yte, source = _fashion_mnist(request.data_dir, request.download)
    mean, std, classes, k = FASHION_MNIST_MEAN, FASHION_MNIST_STD, list(FASHION_MNIST_CLASSES), 10
    return in_memory_bundle(
        spec,
        request,
        (xtr, ytr, xte, yte),
        name="fashion-mnist",
        classes=classes,
        num_classes=k,
        mean=mean,
        std=std,
        source=source,
    )
