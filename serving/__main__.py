"""``python -m serving``: the same as ``flywheel api`` (settings from the environment)."""

from __future__ import annotations

import sys

from flywheel.cli import main

if __name__ == "__main__":
    sys.exit(main(["api", *sys.argv[1:]]))
