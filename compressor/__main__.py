"""``python -m compressor``: the ``compress`` command line (what ``torchrun -m compressor`` runs)."""

from compressor.cli import main

main()
