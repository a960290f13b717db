"""The serving benchmark's load-generator helpers: response heads, latency summaries, counts."""

from __future__ import annotations

import math

import pytest

from bench.loadgen import LoadResult, latency_summary, parse_head


def test_head_gives_status_and_length_whatever_the_header_case() -> None:
    head = b"HTTP/1.1 422 Unprocessable Entity\r\nServer: uvicorn\r\nContent-Length: 57\r\n\r\n"
    assert parse_head(head) == (422, 57)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 abc OK\r\ncontent-length: 1\r\n\r\n",
    ],
)
def test_heads_this_client_cannot_read_are_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_head(head)


def test_summary_quantiles_interpolate_between_samples() -> None:
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100.0 and summary["mean"] == pytest.approx(50.5)


def test_summary_of_nothing_is_not_a_number() -> None:
    assert all(math.isnan(v) for v in latency_summary([]).values())


def test_only_successful_answers_carry_latencies() -> None:
    result = LoadResult()
    result.record(200, b'{"strategy":"online_mf","items":[{"reason":"personal"}]}', 0.002)
    result.record(200, b'{"strategy":"trending","items":[]}', 0.001)
    result.record(503, b'{"detail":"redis down"}', 0.5)
    assert (result.ok, result.errors, result.personal, result.empty) == (2, 1, 1, 1)
    assert result.latencies_ms == pytest.approx([2.0, 1.0])
    assert result.statuses == {200: 2, 503: 1}
