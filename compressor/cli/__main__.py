"""``python -m compressor.cli``: the ``compress`` command."""

from compressor.cli import main

if __name__ == "__main__":
    main()
