"""``python -m probprune`` is the same program as ``probprune``."""

from probprune.cli import main

main()
