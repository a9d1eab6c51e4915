"""What a data spec resolves to (:class:`DataBundle`), what its handler receives (:class:`LoadRequest`),
and :func:`in_memory_bundle`, the bundle every in-memory dataset (fashion-mnist, cifar, synthetic) shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from compressor.data.loaders import Loader, TensorLoader
from compressor.data.splits import _split, _subset
from compressor.errors import BadInput


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


@dataclass(frozen=True)
class LoadRequest:
    """:func:`~compressor.data.load_data`'s options (already checked), as every spec handler receives them."""

    data_dir: str | None
    batch_size: int
    eval_batch_size: int
    val_fraction: float
    subsets: tuple[int | None, int | None, int | None]  # train, val, test
    seed: int
    download: bool
    image_size: int | None
    augment: bool
    num_workers: int


SpecHandler = Callable[[str, str, LoadRequest], DataBundle]
"""``handler(spec, rest, request)``: ``spec`` is the whole (stripped) spec, ``rest`` what follows its first ``:``."""


def in_memory_bundle(
    spec: str,
    request: LoadRequest,
    arrays: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    name: str,
    classes: list[str],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    source: str,
) -> DataBundle:
    """``spec``'s bundle of TensorLoaders over ``(train x, train y, test x, test y)`` held in memory.

    The validation split is carved from train by ``seed`` (``val_fraction``); subsets are seeded.
    """
    xtr, ytr, xte, yte = arrays
    batch_size, eval_batch_size, seed = request.batch_size, request.eval_batch_size, request.seed
    train_subset, val_subset, test_subset = request.subsets
    val_fraction, augment, image_size = request.val_fraction, request.augment, request.image_size
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
        num_classes=num_classes,
        input_shape=train.sample_shape,
        name=name,
        mean=tuple(mean),
        std=tuple(std),
        classes=classes,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        spec=spec,
        source=source,
    )
