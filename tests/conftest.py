"""Session fixtures: the real broker and Redis of the local stack, on free ports.

A service that cannot start fails the tests that need it (never a skip): the error names the
service and shows the tail of its log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local_stack import free_port, start_broker, start_redis


@pytest.fixture(scope="session")
def stack_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the session services' log files."""
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def broker(stack_log_dir: Path) -> Iterator[str]:
    """Bootstrap string (``127.0.0.1:PORT``) of a Tansu broker living for the session."""
    service = start_broker(free_port(), stack_log_dir)
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_url(stack_log_dir: Path) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throw-away Redis living for the session."""
    service = start_redis(free_port(), stack_log_dir)
    try:
        yield f"redis://{service.address}/0"
    finally:
        service.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names and Redis key prefixes."""
    return uuid.uuid4().hex[:10]
