"""Data specs -> loaders: one registry, :data:`SPEC_HANDLERS`, maps each spec prefix to its handler.

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

Adding a dataset: a handler (:data:`~compressor.data.bundle.SpecHandler`) and one entry in
:data:`SPEC_HANDLERS` (plus its usage in :data:`DATA_SPECS` and any spellings in ``_ALIASES``).
"""

from __future__ import annotations

import difflib
from typing import Any

from compressor.config import DEFAULT_PRUNE as _P
from compressor.data.bundle import DataBundle, LoadRequest, SpecHandler
from compressor.data.cifar import cifar10_spec, cifar100_spec
from compressor.data.fashion_mnist import fashion_mnist_spec
from compressor.data.imagefolder import imagefolder_spec
from compressor.data.synthetic import synthetic_spec
from compressor.errors import BadInput
from compressor.runtime.memory import check_fits, tensor_bytes

DATA_SPECS = ["fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "synthetic:CxHxW:classes"]


# Spellings of the bare-name specs -> their SPEC_HANDLERS key.
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


def _name_only(handler: SpecHandler) -> SpecHandler:
    """``handler`` for a spec that is a bare name: ``NAME:anything`` is an unknown spec."""

    def bare(spec: str, rest: str, request: LoadRequest) -> DataBundle:
        if rest:
            raise _unknown_spec(spec)
        return handler(spec, rest, request)

    return bare


SPEC_HANDLERS: dict[str, SpecHandler] = {
    "fashion-mnist": _name_only(fashion_mnist_spec),
    "cifar10": _name_only(cifar10_spec),
    "cifar100": _name_only(cifar100_spec),
    "imagefolder": imagefolder_spec,  # imagefolder:PATH
    "synthetic": synthetic_spec,  # synthetic:CxHxW:classes[:n_train[:n_test]]
}


def _unknown_spec(spec: str) -> BadInput:
    """The error for a spec no handler takes, naming the closest known prefixes."""
    close = difflib.get_close_matches(spec.lower(), list(dict.fromkeys([*_ALIASES, *SPEC_HANDLERS])), n=2)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BadInput(f"unknown data spec {spec!r}: expected one of {', '.join(DATA_SPECS)}{hint}")


def _check_args(**kw: Any) -> None:
    """:class:`BadInput` for a malformed :func:`load_data` option."""
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
    batch_size: int = _P.batch_size,
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
    handler = SPEC_HANDLERS.get(_ALIASES.get(kind, kind))
    if handler is None:
        raise _unknown_spec(spec)
    request = LoadRequest(
        data_dir=data_dir,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_fraction=val_fraction,
        subsets=(train_subset, val_subset, test_subset),
        seed=seed,
        download=download,
        image_size=image_size,
        augment=augment,
        num_workers=num_workers,
    )
    return _checked(handler(spec, rest, request))


def _checked(bundle: DataBundle) -> DataBundle:
    """``bundle``, refused when it cannot train a classifier (fewer than 2 classes) or when one of its batches
    (``batch_size`` samples of ``input_shape`` as float32, at most the split) cannot fit in memory."""
    if bundle.num_classes < 2:
        raise BadInput(f"data spec {bundle.spec!r} has {bundle.num_classes} class(es): a classifier needs at least "
                       "2 classes")  # fmt: skip
    for split, loader in bundle.loaders().items():
        n = min(loader.batch_size, loader.num_samples)
        check_fits(f"data spec {bundle.spec!r}: a {split} batch of {n} inputs {tuple(bundle.input_shape)}",
                   tensor_bytes((n, *bundle.input_shape)), "use a smaller batch size or image size")  # fmt: skip
    return bundle
