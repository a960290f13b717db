"""``monitoring.metrics.serve``: one endpoint per process, on the first free port of a span."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from monitoring.metrics import release, serve


def _free_run(length: int) -> int:
    """First of ``length`` consecutive ports that were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + length > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + length):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return b"process_cpu_seconds_total" in reply.read()
    except OSError:
        return False


def test_a_taken_port_moves_the_endpoint_to_the_next_port_of_the_span() -> None:
    first = _free_run(3)
    with socket.socket() as other_process:
        other_process.bind(("127.0.0.1", first))
        other_process.listen()
        serve(first, "127.0.0.1", span=3)
        try:
            assert _answers(first + 1)
            assert not _answers(first + 2)
        finally:
            release()
    assert not _answers(first + 1)


def test_a_span_of_one_serves_only_the_given_port(caplog: pytest.LogCaptureFixture) -> None:
    first = _free_run(2)
    with socket.socket() as other_process:
        other_process.bind(("127.0.0.1", first))
        other_process.listen()
        serve(first, "127.0.0.1")
        try:
            assert not _answers(first + 1)
            assert f"cannot serve metrics on 127.0.0.1:{first}:" in caplog.text
        finally:
            release()
