"""``python -m serving``: run the recommendation API with settings from the environment."""

from __future__ import annotations

import sys

from flywheel.settings import SettingsError, load_settings
from serving.app import serve


def main() -> int:
    """Validate the settings and serve until interrupted; 2 on an invalid setting."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
