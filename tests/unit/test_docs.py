"""The README documents every setting and every dead-letter reason the code has."""

from __future__ import annotations

from pathlib import Path

from flywheel.events import REJECT_REASONS
from flywheel.settings import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [n for n in Settings.model_fields if f"`{ENV_PREFIX}{n.upper()}`" not in README]
    assert not missing


def test_every_dead_letter_reason_is_documented() -> None:
    assert all(f"`{reason}`" in README for reason in REJECT_REASONS)
