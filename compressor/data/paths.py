"""Where datasets are looked for on disk.

The readers look these names up here when they run, so a test moves a location by patching this
module (e.g. ``compressor.data.paths.DEFAULT_ROOT``); the re-exports in ``compressor.data`` are copies.
"""

from __future__ import annotations

import os
from pathlib import Path

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = Path(os.environ.get("COMPRESS_DATA_DIR", Path.home() / ".cache" / "compress" / "datasets"))
