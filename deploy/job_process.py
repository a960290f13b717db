"""Running the Flink job as a child process (local mini-cluster), for the launcher, tests
and benchmarks.

The child is ``python -m flywheel.cli job`` with the settings passed as ``FLYWHEEL_*``
environment variables, in its own process group so that :meth:`JobProcess.kill` takes the
PyFlink gateway JVM down with it (as a crash would).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy.local_stack import die_with_parent_hook
from flywheel.settings import ENV_PREFIX, Settings

__all__ = ["JobProcess", "latest_checkpoint", "settings_env"]


def settings_env(settings: Settings) -> dict[str, str]:
    """``FLYWHEEL_*`` variables that reproduce ``settings`` in a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, tuple | list | dict):
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


class JobProcess:
    """The streaming job (or another ``flywheel`` subcommand, e.g. ``("api",)``) in a child
    process; logs go to ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path, command: tuple[str, ...] = ("job",)):
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> JobProcess:
        """Start the job (returns at once; the mini-cluster needs ~10-15 s to run)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings)}
        env.setdefault("FLINK_LOG_DIR", str(self.log_path.parent.resolve() / "flink"))
        root = Path(__file__).resolve().parent.parent
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flywheel.cli", *self.command],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent_hook(),
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, no clean shutdown)."""
        self._signal(signal.SIGKILL)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; idempotent."""
        if not self.running:
            self._signal(signal.SIGKILL)
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (a ``chk-N`` directory holding ``_metadata``)."""
    found = [p.parent for p in Path(checkpoint_dir).glob("*/chk-*/_metadata")]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])))
