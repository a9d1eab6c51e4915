"""The dataset layer: data specs -> :class:`DataBundle` s of epoch loaders (:func:`load_data`).

Modules: :mod:`~compressor.data.specs` (the spec registry and :func:`load_data`; the specs are
documented there), :mod:`~compressor.data.loaders` (:class:`TensorLoader`, :class:`ImageLoader`,
sharding), :mod:`~compressor.data.bundle` (:class:`DataBundle`), :mod:`~compressor.data.splits`,
:mod:`~compressor.data.paths` (where datasets are looked for; patch locations there), and one module
per dataset: :mod:`~compressor.data.fashion_mnist`, :mod:`~compressor.data.cifar`,
:mod:`~compressor.data.imagefolder`, :mod:`~compressor.data.synthetic`.
"""

from __future__ import annotations

from compressor.data.bundle import DataBundle
from compressor.data.loaders import ImageLoader, TensorLoader
from compressor.data.paths import FASHION_MNIST_DEBIAN_DIR, FASHION_MNIST_DEBIAN_PACKAGE
from compressor.data.specs import DATA_SPECS, load_data
from compressor.data.synthetic import parse_synthetic

__all__ = [
    "DataBundle",
    "TensorLoader",
    "ImageLoader",
    "load_data",
    "DATA_SPECS",
    "FASHION_MNIST_DEBIAN_DIR",
    "FASHION_MNIST_DEBIAN_PACKAGE",
    "parse_synthetic",
]
