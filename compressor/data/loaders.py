"""Epoch loaders: :class:`TensorLoader` (in-memory tensors) and :class:`ImageLoader` (image files).

Both iterate one epoch per pass, seeded by ``(seed, epoch)``, and can yield one rank's share of each
epoch (``DistributedSampler``'s algorithm, :func:`shard_positions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.errors import BadInput


def _epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch ``epoch`` (also salts the splits and subsets)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


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
    """How many positions :func:`shard_positions` gives rank ``rank``."""
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
        """Crop the zero-padded batch at each sample's (dy, dx) and flip where its flag is set."""
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
        """One batch: samples ``idx`` as float, augmented, resized, normalised; with their labels."""
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
        try:
            yield from loader
        except BadInput as e:  # raised in a worker process: the message carries the worker's traceback
            lines = str(e).strip().splitlines()
            if len(lines) < 2:
                raise
            raise BadInput(lines[-1].removeprefix("compressor.errors.BadInput: ")) from None

    def __repr__(self) -> str:
        return f"ImageLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle})"


Loader = TensorLoader | ImageLoader
