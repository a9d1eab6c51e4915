"""Data specs -> loaders.

Specs:

* ``fashion-mnist`` -- the IDX files (``train-images-idx3-ubyte[.gz]`` etc.), read with numpy+gzip
  from ``data_dir`` or from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``); torchvision download only with ``download=True``.
* ``cifar10`` / ``cifar100`` -- the standard python-pickle layout (``cifar-10-batches-py/`` /
  ``cifar-100-python/``) under ``data_dir`` (or ``data_dir`` itself being that folder); read with a
  restricted unpickler (numpy arrays and plain containers only); torchvision downloads with
  ``download=True``.
* ``imagefolder:PATH`` -- torchvision ``ImageFolder`` (class sub-folders). ``PATH/train`` plus
  ``PATH/val`` or ``PATH/test`` is used when present (that folder is the test split; with both,
  ``val`` is the validation split and ``test`` the test split); otherwise ``PATH`` (or
  ``PATH/train``) alone is split 90/10 into train/test with a fixed seed.
* ``synthetic:CxHxW:classes[:n_train[:n_test]]`` -- tests only: a deterministic, learnable dataset
  (class-dependent low-frequency patterns and colours plus noise), 512 train / 128 test by default.

The validation split is carved from the train set by ``seed`` (``val_fraction``) for every spec;
``test`` is the official test split. Subsets are deterministic random subsets (seeded).

The small in-memory datasets (fashion-mnist, cifar, synthetic) use :class:`TensorLoader`: uint8
tensors in memory, batched augmentation on tensors (random crop with zero padding and horizontal
flip), no per-sample PIL work.
"""

from __future__ import annotations

import difflib
import gzip
import math
import os
import pickle
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.errors import BadInput, one_line

__all__ = [
    "DataBundle",
    "TensorLoader",
    "ImageLoader",
    "load_data",
    "DATA_SPECS",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_DEBIAN_PACKAGE",
]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = Path(os.environ.get("COMPRESS_DATA_DIR", Path.home() / ".cache" / "compress" / "datasets"))
DATA_SPECS = ["fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "synthetic:CxHxW:classes"]

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
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
IMAGEFOLDER_TEST_FRACTION = 0.1
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
}


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def shard_positions(n: int, rank: int, world_size: int, pad: bool) -> Tensor:
    """Positions of an epoch's order that rank ``rank`` takes (``DistributedSampler``'s algorithm)."""
    pos = torch.arange(n)
    if world_size == 1:
        return pos
    total = math.ceil(n / world_size) * world_size
    if pad and total > n:
        pos = torch.cat([pos, pos[: total - n]])
    return pos[rank::world_size]


def shard_size(n: int, rank: int, world_size: int, pad: bool) -> int:
    return len(range(rank, math.ceil(n / world_size) * world_size if pad else n, world_size))


class _EpochLoader:
    """What both loaders share: an epoch per iteration (:meth:`set_epoch`), one rank's share of it
    (:meth:`set_distributed`), ``len()`` in batches, and :meth:`iter_from` for a mid-epoch start."""

    batch_size: int

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._iterations = 0
        self.rank, self.world_size, self.pad_shards = 0, 1, True

    @property
    def dataset_size(self) -> int:
        raise NotImplementedError

    @property
    def num_samples(self) -> int:
        """Samples this loader yields per epoch (this rank's share under :meth:`set_distributed`)."""
        return shard_size(self.dataset_size, self.rank, self.world_size, self.pad_shards)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch the next iteration uses (shuffle order and augmentation)."""
        self.epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int, pad: bool = True) -> None:
        """Yield rank ``rank``'s share; ``pad=False`` (evaluation) drops the wrap-around padding."""
        if not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world size {world_size}")
        self.rank, self.world_size, self.pad_shards = int(rank), int(world_size), bool(pad)

    def _next_epoch(self) -> int:
        """The epoch an iteration starting now uses (the set one, else a counter of iterations)."""
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        return epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from batch number ``batch`` on (0: the whole epoch)."""
        raise NotImplementedError


class TensorLoader(_EpochLoader):
    """Batches from in-memory tensors, normalised to float, with batched augmentation.

    ``images``: ``(N, C, H, W)`` uint8 (0..255) or float (0..1); ``labels``: ``(N,)`` int64.
    Yields ``(x float32 (B, C, H', W'), y int64 (B,))``; ``len()`` is the number of batches
    (``drop_last=False``). Shuffling and augmentation draw from a ``torch.Generator`` seeded by
    ``(seed, epoch)``: call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``), or
    don't, and every new iteration advances an internal epoch counter. Either way the stream is a
    pure function of seed and epoch. Augmentation: random crop of the zero-padded image (``pad``
    pixels; default 2 below 32 px, 4 from 32 px) and horizontal flip with p=0.5. ``image_size``
    resizes every batch (bilinear, antialiased) after augmentation. The crop offsets and flips are drawn
    per position of the epoch's order, so a batch's augmentation does not depend on how the epoch is
    split. :meth:`set_distributed` makes the loader yield one rank's share of each epoch with
    ``DistributedSampler``'s algorithm (the order padded by wrapping to a multiple of ``world_size``, then
    every ``world_size``-th position from ``rank``): with a per-rank batch of ``B / world_size`` the ranks'
    k-th batches together are exactly the one-process k-th batch of size ``B``. :meth:`iter_from` starts
    an epoch at a later batch (mid-epoch resume).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Iterable[float],
        std: Iterable[float],
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        pad: int | None = None,
        flip: bool = True,
        image_size: int | None = None,
        indices: Tensor | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError("labels must be (N,) matching images")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.images = images
        self.labels = labels.long()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        h, w = images.shape[-2:]
        self.pad = (4 if min(h, w) >= 32 else 2 if min(h, w) >= 8 else 0) if pad is None else int(pad)
        self.flip = flip
        self.image_size = image_size
        # Positions of these samples in their source split (train or test), for bookkeeping only.
        self.indices = torch.arange(images.shape[0]) if indices is None else indices
        c = images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] not in (1, c) or self.std.shape[1] not in (1, c):
            raise ValueError("mean/std must have 1 or C entries")
        super().__init__()

    # -- sizes -------------------------------------------------------------------------------
    @property
    def dataset_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        if self.image_size:
            h = w = self.image_size
        return int(c), int(h), int(w)

    # -- iteration ---------------------------------------------------------------------------
    def _plan(self, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """This rank's sample order for the epoch and, when augmenting, each position's (dy, dx, flip)."""
        n = self.dataset_size
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        aug = None
        if self.augment:
            span = 2 * self.pad + 1
            aug = torch.stack([torch.randint(0, span, (n,), generator=gen), torch.randint(0, span, (n,), generator=gen),
                               (torch.rand(n, generator=gen) < 0.5).long()], 1)  # fmt: skip
        pos = shard_positions(n, self.rank, self.world_size, self.pad_shards)
        return order[pos], None if aug is None else aug[pos]

    def _augment(self, x: Tensor, aug: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.pad
        if p > 0:
            xp = F.pad(x, (p, p, p, p))
            oy, ox = aug[:, 0], aug[:, 1]
            rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]
            bidx = torch.arange(b)[:, None, None, None]
            cidx = torch.arange(c)[None, :, None, None]
            x = xp[bidx, cidx, rows, cols]
        if self.flip:
            x = torch.where(aug[:, 2].bool()[:, None, None, None], x.flip(3), x)
        return x

    def _prepare(self, idx: Tensor, aug: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.images.index_select(0, idx)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if aug is not None:
            x = self._augment(x, aug)
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        x = (x - self.mean) / self.std
        return x.contiguous(), self.labels.index_select(0, idx)

    def iter_from(self, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from batch number ``batch`` on (0: the whole epoch)."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self._next_epoch()))
        order, aug = self._plan(gen)
        for start in range(batch * self.batch_size, len(order), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield self._prepare(order[sl], None if aug is None else aug[sl])

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.dataset_size}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"augment={self.augment}, shape={self.sample_shape})"
        )


class _TransformSubset(torch.utils.data.Dataset):
    def __init__(self, base: Any, indices: list[int], transform: Any) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, target = self.base.samples[self.indices[i]]
        img = self.base.loader(path)
        return self.transform(img), target


class ImageLoader(_EpochLoader):
    """A ``DataLoader`` over image files with the :class:`TensorLoader` interface (``set_epoch``,
    ``len()`` = batches, deterministic shuffle by ``(seed, epoch)``)."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int,
        sample_shape: tuple[int, int, int],
    ):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.sample_shape = sample_shape
        self.indices: Tensor | None = None  # positions in the source folder's sample list
        super().__init__()

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def iter_from(self, batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from batch number ``batch`` on; a rank's share through ``DistributedSampler``."""
        epoch = self._next_epoch()
        if self.pad_shards:
            sampler = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=self.shuffle, seed=self.seed
            )
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:  # evaluation: every sample exactly once over the ranks
            order = shard_positions(self.dataset_size, self.rank, self.world_size, False).tolist()
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order[batch * self.batch_size :],
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch)),
            drop_last=False,
        )
        yield from loader

    def __repr__(self) -> str:
        return f"ImageLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle})"


Loader = TensorLoader | ImageLoader


@dataclass
class DataBundle:
    """Loaders and facts about one data spec.

    ``val`` is ``None`` when no validation split was requested (``val_fraction=0`` and no explicit
    validation folder). ``sizes`` counts samples per split; ``mean``/``std`` are the per-channel
    normalisation constants applied by the loaders; ``input_shape`` is ``(C, H, W)`` of the batches.
    """

    train: Loader
    val: Loader | None
    test: Loader
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    spec: str = ""
    source: str = ""  # where the files were read from (empty for synthetic)

    def loaders(self) -> dict[str, Loader]:
        out: dict[str, Loader] = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic (rest, carved) index split of ``range(n)``; both sorted."""
    k = int(round(n * fraction)) if fraction > 0 else 0
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(seed, 10_001)))
    return perm[k:].sort().values, perm[:k].sort().values


def _subset(idx: Tensor, size: int | None, seed: int, salt: int) -> Tensor:
    if size is None or size >= len(idx):
        return idx
    gen = torch.Generator().manual_seed(_epoch_seed(seed, salt))
    return idx[torch.randperm(len(idx), generator=gen)[:size]].sort().values


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------

_FMNIST_FILES = {
    "train_images": ("train", "images", 3),
    "train_labels": ("train", "labels", 1),
    "test_images": ("t10k", "images", 3),
    "test_labels": ("t10k", "labels", 1),
}


def _idx_candidates(prefix: str, kind: str, ndim: int) -> list[str]:
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [n + ext for n in names for ext in (".gz", "")]


def _find_fmnist_files(directory: Path) -> dict[str, Path] | None:
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
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"cannot read IDX file {path}: {one_line(e)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInput(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BadInput(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != math.prod(dims):
        raise BadInput(f"{path}: IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


_FMNIST_ARRAYS: dict[tuple, dict[str, np.ndarray]] = {}  # the last dataset read (loads take ~0.5 s)


def _load_fashion_mnist_arrays(files: dict[str, Path]) -> dict[str, np.ndarray]:
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
    dirs = [Path(data_dir).expanduser()] if data_dir else [FASHION_MNIST_DEBIAN_DIR, DEFAULT_ROOT]
    for d in dirs:
        files = _find_fmnist_files(d)
        if files is not None:
            break
    else:
        if download:
            root = dirs[0] if data_dir else DEFAULT_ROOT
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
                f"{FASHION_MNIST_DEBIAN_PACKAGE}, point the data directory at those files, or enable download"
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


# --------------------------------------------------------------------------------------------
# CIFAR (python pickles)
# --------------------------------------------------------------------------------------------

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
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise BadInput(f"cannot read CIFAR file {path}: {one_line(e)[:200]}") from None


def _cifar_dir(root: Path, folder: str, files: list[str]) -> Path | None:
    for d in (root / folder, root):
        if all((d / f).is_file() for f in files):
            return d
    return None


def _read_cifar_split(d: Path, names: list[str], label_key: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for name in names:
        entry = _load_pickle(d / name)
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise BadInput(f"{d / name} is not a CIFAR batch (needs 'data' and '{label_key}')")
        x = np.asarray(entry["data"], dtype=np.uint8)
        y = np.asarray(entry[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != y.shape[0]:
            raise BadInput(f"{d / name}: expected data (N, 3072) and N labels, got {x.shape} and {y.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar(kind: str, data_dir: str | None, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str], str]:
    info = _CIFAR[kind]
    root = Path(data_dir).expanduser() if data_dir else DEFAULT_ROOT
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


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


def parse_synthetic(rest: str, spec: str) -> tuple[tuple[int, int, int], int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+):(\d+)(?::(\d+))?(?::(\d+))?", rest.strip())
    if not m:
        raise BadInput(f"bad data spec {spec!r}: expected synthetic:CxHxW:classes, e.g. synthetic:3x32x32:10")
    c, h, w, k = (int(g) for g in m.groups()[:4])
    n_train = int(m.group(5)) if m.group(5) else 512
    n_test = int(m.group(6)) if m.group(6) else 128
    if min(c, h, w) < 1 or k < 2 or n_train < 2 or n_test < 1:
        raise BadInput(f"bad data spec {spec!r}: sizes must be >= 1, classes >= 2, train >= 2")
    if c * h * w * (n_train + n_test) > 2**31:
        raise BadInput(f"data spec {spec!r} is too large for a synthetic in-memory dataset")
    return (c, h, w), k, n_train, n_test


def _synthetic(shape: tuple[int, int, int], k: int, n_train: int, n_test: int) -> tuple[Tensor, ...]:
    """Class ``y`` image = 0.45 * low-frequency pattern_y + 0.35 * colour_y + noise, as uint8."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(20240517 + 7 * k + c * h * w)
    low = torch.rand(k, c, max(1, h // 4), max(1, w // 4), generator=gen)
    patterns = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    colours = torch.rand(k, c, 1, 1, generator=gen)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randperm(n, generator=gen) % k
        x = 0.45 * patterns[y] + 0.35 * colours[y] + 0.1 + 0.12 * torch.randn(n, c, h, w, generator=gen)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y.long()

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def _image_folder(path: Path) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError) as e:
        raise BadInput(f"imagefolder {path}: {one_line(e)[:200]} (expected PATH/<class>/<image> files)") from None


def _imagefolder_bundle(
    spec: str,
    rest: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    val_fraction: float,
    subsets: tuple[int | None, int | None, int | None],
    seed: int,
    image_size: int | None,
    augment: bool,
    num_workers: int,
) -> DataBundle:
    from torchvision import transforms as T

    if not rest:
        raise BadInput(f"bad data spec {spec!r}: expected imagefolder:PATH")
    root = Path(rest).expanduser()
    if not root.is_dir():
        raise BadInput(f"imagefolder directory not found: {root} (expected class sub-folders, or train/ and val/)")
    size = image_size or 224
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    eval_tf = T.Compose([T.Resize(int(round(size / 0.875))), T.CenterCrop(size), T.ToTensor(), norm])
    train_tf = (
        T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else eval_tf
    )

    sub = {n: root / n for n in ("train", "val", "test") if (root / n).is_dir()}
    if "train" not in sub and sub:
        raise BadInput(f"imagefolder {root} has {'/ and '.join(sub)}/ but no train/ folder")
    train_ds = _image_folder(sub.get("train", root))
    n_all = len(train_ds.samples)
    all_idx = torch.arange(n_all)
    val_ds = test_ds = None
    if "train" in sub and "val" in sub and "test" in sub:
        val_ds, test_ds = _image_folder(sub["val"]), _image_folder(sub["test"])
        train_idx, val_idx = all_idx, None
    else:
        held = sub.get("test", sub.get("val")) if "train" in sub else None
        if held is not None:
            test_ds = _image_folder(held)
            rest_idx, test_idx = all_idx, None
        else:  # one directory: a fixed-seed test split (the same for every --seed)
            rest_idx, test_idx = _split(n_all, IMAGEFOLDER_TEST_FRACTION, seed=0)
        keep, carved = _split(len(rest_idx), val_fraction, seed)
        train_idx, val_idx = rest_idx[keep], rest_idx[carved]
    for other in (val_ds, test_ds):
        if other is not None and other.classes != train_ds.classes:
            raise BadInput(
                f"imagefolder {root}: class folders differ between splits "
                f"({len(train_ds.classes)} in train vs {len(other.classes)} in {Path(other.root).name})"
            )
    train_sub, val_sub, test_sub = subsets
    shape = (3, size, size)

    def loader(ds: Any, idx: Tensor | None, n: int | None, salt: int, train: bool) -> ImageLoader:
        idx = torch.arange(len(ds.samples)) if idx is None else idx
        idx = _subset(idx, n, seed, salt)
        data = _TransformSubset(ds, idx.tolist(), train_tf if train else eval_tf)
        out = ImageLoader(
            data,
            batch_size=batch_size if train else eval_batch_size,
            shuffle=train,
            seed=seed,
            num_workers=num_workers,
            sample_shape=shape,
        )
        out.indices = idx
        return out

    train_l = loader(train_ds, train_idx, train_sub, 1, True)
    if val_ds is not None:
        val_l: ImageLoader | None = loader(val_ds, None, val_sub, 2, False)
    elif val_idx is not None and len(val_idx) > 0:
        val_l = loader(train_ds, val_idx, val_sub, 2, False)
    else:
        val_l = None
    if test_ds is not None:
        test_l = loader(test_ds, None, test_sub, 3, False)
    else:
        test_l = loader(train_ds, test_idx, test_sub, 3, False)
    if train_l.num_samples == 0 or test_l.num_samples == 0:
        raise BadInput(f"imagefolder {root}: too few images to make train and test splits")
    return DataBundle(
        train=train_l,
        val=val_l,
        test=test_l,
        num_classes=len(train_ds.classes),
        input_shape=shape,
        name="imagefolder",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=list(train_ds.classes),
        sizes={
            "train": train_l.num_samples,
            "val": val_l.num_samples if val_l is not None else 0,
            "test": test_l.num_samples,
        },
        spec=spec,
        source=str(root),
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_args(**kw: Any) -> None:
    for name in ("batch_size", "eval_batch_size"):
        if not isinstance(kw[name], int) or kw[name] < 1:
            raise BadInput(f"{name} must be a positive integer, got {kw[name]!r}")
    vf = kw["val_fraction"]
    if not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise BadInput(f"val_fraction must be in [0, 1), got {vf!r}")
    for name in ("train_subset", "val_subset", "test_subset", "image_size"):
        v = kw[name]
        if v is not None and (not isinstance(v, int) or v < 1):
            raise BadInput(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(kw["num_workers"], int) or kw["num_workers"] < 0:
        raise BadInput(f"num_workers must be >= 0, got {kw['num_workers']!r}")


def load_data(
    spec: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    eval_batch_size: int = 256,
    val_fraction: float = 0.1,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    image_size: int | None = None,
    augment: bool = True,
    num_workers: int = 0,
) -> DataBundle:
    """Resolve a data spec (see the module docstring) into a :class:`DataBundle`.

    ``num_workers`` only applies to ``imagefolder`` (the other datasets are in memory). ``image_size``
    resizes in-memory datasets per batch; for ``imagefolder`` it is the crop size (default 224).
    Raises :class:`BadInput` (one line) for malformed specs, missing or corrupt data.
    """
    _check_args(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_fraction=val_fraction,
        train_subset=train_subset,
        val_subset=val_subset,
        test_subset=test_subset,
        image_size=image_size,
        num_workers=num_workers,
    )
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput("empty data spec; expected one of " + ", ".join(DATA_SPECS))
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    subsets = (train_subset, val_subset, test_subset)

    if kind == "imagefolder":
        return _imagefolder_bundle(
            spec,
            rest,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            subsets=subsets,
            seed=seed,
            image_size=image_size,
            augment=augment,
            num_workers=num_workers,
        )

    if kind == "synthetic":
        shape, k, n_train, n_test = parse_synthetic(rest, spec)
        xtr, ytr, xte, yte = _synthetic(shape, k, n_train, n_test)
        xf = xtr.float().div(255)
        mean = tuple(float(v) for v in xf.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-3) for v in xf.std(dim=(0, 2, 3)))
        classes, name, source = [str(i) for i in range(k)], f"synthetic:{'x'.join(map(str, shape))}:{k}", ""
    else:
        canon = _ALIASES.get(kind) if not rest else None
        if canon is None:
            close = difflib.get_close_matches(spec.lower(), list(_ALIASES) + ["imagefolder", "synthetic"], n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise BadInput(f"unknown data spec {spec!r}: expected one of {', '.join(DATA_SPECS)}{hint}")
        name = canon
        if canon == "fashion-mnist":
            xtr, ytr, xte, yte, source = _fashion_mnist(data_dir, download)
            mean, std, classes, k = FASHION_MNIST_MEAN, FASHION_MNIST_STD, list(FASHION_MNIST_CLASSES), 10
        else:
            xtr, ytr, xte, yte, classes, source = _cifar(canon, data_dir, download)
            mean, std = (CIFAR10_MEAN, CIFAR10_STD) if canon == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
            k = len(classes)

    keep, carved = _split(len(ytr), val_fraction, seed)
    train_idx = _subset(keep, train_subset, seed, 1)
    val_idx = _subset(carved, val_subset, seed, 2)
    test_idx = _subset(torch.arange(len(yte)), test_subset, seed, 3)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise BadInput(f"data spec {spec!r}: empty train or test split")

    def make(x: Tensor, y: Tensor, idx: Tensor, train: bool) -> TensorLoader:
        if len(idx) != len(y):
            x, y = x.index_select(0, idx), y.index_select(0, idx)
        return TensorLoader(
            x,
            y,
            batch_size=batch_size if train else eval_batch_size,
            mean=mean,
            std=std,
            shuffle=train,
            augment=train and augment,
            seed=seed,
            image_size=image_size,
            indices=idx,
        )

    train = make(xtr, ytr, train_idx, True)
    val = make(xtr, ytr, val_idx, False) if len(val_idx) else None
    test = make(xte, yte, test_idx, False)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=k,
        input_shape=train.sample_shape,
        name=name,
        mean=tuple(mean),
        std=tuple(std),
        classes=classes,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        spec=spec,
        source=source,
    )
