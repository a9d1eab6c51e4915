"""``python -m compressor``: the ``compress`` command line (what ``torchrun -m compressor`` runs)."""

from compressor.cli import entry_point

entry_point()
