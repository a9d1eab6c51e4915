"""``imagefolder:PATH``: torchvision ``ImageFolder`` class sub-folders, read per batch by :class:`ImageLoader`.

``PATH/train`` plus ``PATH/val`` or ``PATH/test`` is used when present (that folder is the test split;
with both, ``val`` is the validation split and ``test`` the test split); otherwise ``PATH`` (or
``PATH/train``) alone is split 90/10 into train/test with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from compressor.data.bundle import DataBundle, LoadRequest
from compressor.data.loaders import ImageLoader
from compressor.data.splits import _split, _subset
from compressor.errors import BadInput, one_line

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_TEST_FRACTION = 0.1


class _TransformSubset(torch.utils.data.Dataset):
    """Samples ``indices`` of an ``ImageFolder``, each loaded and transformed when asked for."""

    def __init__(self, base: Any, indices: list[int], transform: Any) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, target = self.base.samples[self.indices[i]]
        try:  # PIL decodes lazily: a corrupt or truncated file fails in the transform as often as in the open
            return self.transform(self.base.loader(path)), target
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
            raise BadInput(f"imagefolder image {path} cannot be decoded: {one_line(e, 200)}") from None


def _image_folder(path: Path) -> Any:
    """A torchvision ``ImageFolder`` of ``path``; :class:`BadInput` when it has no class folders."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, OSError) as e:
        raise BadInput(f"imagefolder {path}: {one_line(e)[:200]} (expected PATH/<class>/<image> files)") from None


class _FolderSplits(NamedTuple):
    """The ImageFolders of one ``imagefolder:PATH`` and which of their samples each split takes.

    ``val_ds``/``test_ds`` are ``None`` when that split is carved from ``train_ds``; an index tensor of
    ``None`` means the whole folder.
    """

    train_ds: Any
    val_ds: Any | None
    test_ds: Any | None
    train_idx: Tensor
    val_idx: Tensor | None
    test_idx: Tensor | None


def _transforms(size: int, augment: bool) -> tuple[Any, Any]:
    """(train, eval) transforms: resize + centre crop for eval; random resized crop + flip to train with ``augment``."""
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    eval_tf = T.Compose([T.Resize(int(round(size / 0.875))), T.CenterCrop(size), T.ToTensor(), norm])
    train_tf = (
        T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else eval_tf
    )
    return train_tf, eval_tf


def _imagefolder_root(spec: str, rest: str) -> Path:
    """The folder ``imagefolder:PATH`` names; :class:`BadInput` when there is none."""
    if not rest:
        raise BadInput(f"bad data spec {spec!r}: expected imagefolder:PATH")
    root = Path(rest).expanduser()
    if not root.is_dir():
        raise BadInput(f"imagefolder directory not found: {root} (expected class sub-folders, or train/ and val/)")
    return root


def _folder_splits(root: Path, val_fraction: float, seed: int) -> _FolderSplits:
    """Read the split folders under ``root`` (see the module docstring) and carve the splits they lack."""
    sub = {n: root / n for n in ("train", "val", "test") if (root / n).is_dir()}
    if "train" not in sub and sub:
        raise BadInput(f"imagefolder {root} has {'/ and '.join(sub)}/ but no train/ folder")
    train_ds = _image_folder(sub.get("train", root))
    n_all = len(train_ds.samples)
    all_idx = torch.arange(n_all)
    val_ds = test_ds = None
    test_idx: Tensor | None = None
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
    return _FolderSplits(train_ds, val_ds, test_ds, train_idx, val_idx, test_idx)


def _split_loaders(
    folders: _FolderSplits, request: LoadRequest, train_tf: Any, eval_tf: Any, shape: tuple[int, int, int]
) -> tuple[ImageLoader, ImageLoader | None, ImageLoader]:
    """The (train, val, test) loaders over ``folders``, each a seeded subset when the request asks for one."""
    train_ds, val_ds, test_ds, train_idx, val_idx, test_idx = folders
    batch_size, eval_batch_size, seed = request.batch_size, request.eval_batch_size, request.seed
    num_workers = request.num_workers
    train_sub, val_sub, test_sub = request.subsets

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
    return train_l, val_l, test_l


def imagefolder_spec(spec: str, rest: str, request: LoadRequest) -> DataBundle:
    """``imagefolder:PATH``: :class:`ImageLoader` s over the image files (crop size ``image_size``, default 224)."""
    size = request.image_size or 224
    train_tf, eval_tf = _transforms(size, request.augment)  # torchvision is imported before any check, as ever
    root = _imagefolder_root(spec, rest)
    folders = _folder_splits(root, request.val_fraction, request.seed)
    shape = (3, size, size)
    train_l, val_l, test_l = _split_loaders(folders, request, train_tf, eval_tf, shape)
    if train_l.num_samples == 0 or test_l.num_samples == 0:
        raise BadInput(f"imagefolder {root}: too few images to make train and test splits")
    return DataBundle(
        train=train_l,
        val=val_l,
        test=test_l,
        num_classes=len(folders.train_ds.classes),
        input_shape=shape,
        name="imagefolder",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=list(folders.train_ds.classes),
        sizes={
            "train": train_l.num_samples,
            "val": val_l.num_samples if val_l is not None else 0,
            "test": test_l.num_samples,
        },
        spec=spec,
        source=str(root),
    )
