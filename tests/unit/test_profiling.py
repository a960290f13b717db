"""The opt-in operator profiles: one per profiled thread, written while it runs and on stop."""

from __future__ import annotations

import pstats
import sys
import threading
import time
from pathlib import Path

import pytest

from flink_jobs import profiling
from flywheel.settings import SettingsError, load_settings


def _operator_work(n: int) -> int:
    return sum(i * i for i in range(n))


def _other_work(n: int) -> int:
    return sum(range(n))


def _functions(path: Path) -> set[str]:
    return {name for _, _, name in pstats.Stats(str(path)).stats}  # type: ignore[attr-defined]


def test_each_thread_profiles_only_itself_and_is_dumped_while_running_and_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiling, "DUMP_EVERY_S", 0.05)
    started, release = threading.Event(), threading.Event()

    def operator() -> None:  # what a task thread does: open(), then calls, then close()
        profiling.start(str(tmp_path / "profiles"), "users")
        _operator_work(1000)
        started.set()
        release.wait(30)
        profiling.stop()

    thread = threading.Thread(target=operator)
    thread.start()
    assert started.wait(30)
    _other_work(1000)  # another thread's calls are not in the operator's profile
    path = tmp_path / "profiles" / f"users-{thread.ident}.prof"
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "_operator_work" in _functions(path)  # written while the thread still runs
    release.set()
    thread.join(30)
    names = _functions(path)
    assert "_operator_work" in names and "_other_work" not in names
    assert list((tmp_path / "profiles").glob("*.tmp")) == []


def test_an_empty_directory_profiles_nothing_and_a_file_is_refused(tmp_path: Path) -> None:
    profiling.start("", "users")
    assert sys.getprofile() is None
    profiling.stop()
    assert load_settings(profile_dir=str(tmp_path / "new")).profile_dir.endswith("new")
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match=r"FLYWHEEL_PROFILE_DIR.*expected a directory"):
        load_settings(profile_dir=str(tmp_path / "file"))


def test_a_profile_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "profiles"
    profiling.start(str(directory), "gone")
    _operator_work(1_000)
    for leftover in directory.glob("*"):
        leftover.unlink()
    directory.rmdir()  # removed under the profiler, as a test's temporary directory is
    with caplog.at_level("WARNING", logger="flink_jobs.profiling"):
        profiling.stop()  # an operator's close(): must not raise
    assert "cannot write profile" in caplog.text
