"""Load generators of the serving benchmark; each runs in its own process, apart from the server.

- Redis: :func:`redis_latencies` (sequential ``GET`` s on one connection, one round trip each,
  timed one by one) and :func:`redis_throughput` (``GET`` s in a loop for a fixed time, to be
  run in several processes at once).
- HTTP: :func:`open_loop` sends requests at a fixed rate whatever the answers (each request
  has a scheduled send time; its latency runs from that time, so waiting for a free
  connection or a late scheduler counts, as it would for a shopper) and :func:`closed_loop`
  keeps ``connections`` requests in flight for a fixed time (maximum throughput).

The HTTP client is a minimal HTTP/1.1 keep-alive ``GET`` over asyncio streams: measured on
the benchmark machine, httpx's async client spends ~1.9 ms of CPU per request, so at 500
requests/s it would take a whole core from the API on a 2-core host; this one spends ~0.3 ms
(each run reports its own figure, ``LoadResult.cpu_s``). It understands ``Content-Length``
responses only (what uvicorn sends for JSON).

State: the latencies of one run (one float per request), returned to the caller.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

__all__ = [
    "LoadResult",
    "closed_loop",
    "latency_summary",
    "open_loop",
    "parse_head",
    "redis_latencies",
    "redis_throughput",
]

HOST = "127.0.0.1"
_TIMEOUT_S = 5.0  # per request, from its send
_GRACE_S = 10.0  # open loop: wait for answers after the last scheduled send
_HEAD_END = b"\r\n\r\n"


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p90``, ``p99``, ``max`` and ``mean`` of latencies in ms (NaN when empty).

    >>> latency_summary([1.0, 2.0, 3.0, 4.0])["p50"]
    2.5
    >>> latency_summary([])["p99"]
    nan
    """
    if not len(latencies_ms):
        return {k: float("nan") for k in ("p50", "p90", "p99", "max", "mean")}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99]).tolist()
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def parse_head(head: bytes) -> tuple[int, int]:
    """``(status, content length)`` of an HTTP/1.1 response head (through the blank line).

    Raises ValueError for anything this client cannot read (no length, chunked, not HTTP/1.x).

    >>> parse_head(b"HTTP/1.1 200 OK\\r\\ncontent-length: 12\\r\\n\\r\\n")
    (200, 12)
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and value.strip().lower() != b"identity":
            raise ValueError(f"unsupported transfer-encoding {value.strip()!r}")
        if name == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without content-length")
    return int(parts[1]), length


class _Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n\r\n".encode())
        status, length = parse_head(await self.reader.readuntil(_HEAD_END))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class LoadResult:
    """What one load run saw; ``latencies_ms`` holds the successful requests only, and the
    warm-up's requests are only counted in ``warmup_sent`` and ``warmup_ok``. ``errors``
    counts non-200 answers, failed connections, timeouts and ``unanswered`` requests (open
    loop: cancelled when still waiting ``_GRACE_S`` after the last scheduled send)."""

    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # the load generator's own CPU time, warm-up included
    sent: int = 0
    warmup_sent: int = 0
    warmup_ok: int = 0
    ok: int = 0
    errors: int = 0
    unanswered: int = 0
    personal: int = 0
    empty: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, status: int, body: bytes, latency_s: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200:
            self.errors += 1
            return
        self.ok += 1
        self.latencies_ms.append(latency_s * 1000)
        self.personal += b'"reason":"personal"' in body
        self.empty += b'"items":[]' in body


async def _request(conn: _Connection, path: str, result: LoadResult, since: float) -> None:
    """One GET, recorded in ``result`` with its latency from ``since``; errors count."""
    try:
        status, body = await asyncio.wait_for(conn.get(path), _TIMEOUT_S)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        conn.close()
        result.errors += 1
        return
    result.record(status, body, time.perf_counter() - since)


async def _open_loop(
    port: int, paths: Sequence[str], rate: float, duration_s: float, warmup_s: float, conns: int
) -> LoadResult:
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(_Connection(port))
    measured, ignored = LoadResult(), LoadResult()
    pending: dict[asyncio.Task[None], LoadResult] = {}

    async def one(path: str, due: float, into: LoadResult) -> None:
        conn = await pool.get()  # waiting for a free connection is part of the latency
        try:
            await _request(conn, path, into, due)
        finally:
            pool.put_nowait(conn)

    start = time.perf_counter() + 0.05
    total = int((warmup_s + duration_s) * rate)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        into = ignored if i < warmup_s * rate else measured
        into.sent += 1
        task = asyncio.create_task(one(paths[i % len(paths)], due, into))
        pending[task] = into
        task.add_done_callback(lambda t: pending.pop(t, None))
    if pending:  # a server that cannot keep up: what is unanswered after the grace is an error
        await asyncio.wait(list(pending), timeout=_GRACE_S)
    late = list(pending.items())
    for task, into in late:
        task.cancel()
        into.errors += 1
        into.unanswered += 1
    await asyncio.gather(*(task for task, _ in late), return_exceptions=True)
    measured.elapsed_s = time.perf_counter() - (start + warmup_s)
    measured.warmup_sent, measured.warmup_ok = ignored.sent, ignored.ok
    while not pool.empty():
        pool.get_nowait().close()
    return measured


async def _closed_loop(
    port: int, paths: Sequence[str], conns: int, duration_s: float, warmup_s: float
) -> LoadResult:
    result, ignored = LoadResult(), LoadResult()
    begin = time.perf_counter() + warmup_s
    end = begin + duration_s

    async def worker(offset: int) -> None:
        conn, i = _Connection(port), offset
        try:
            while (now := time.perf_counter()) < end:
                into = result if now >= begin else ignored
                into.sent += 1
                await _request(conn, paths[i % len(paths)], into, now)
                i += conns
        finally:
            conn.close()

    await asyncio.gather(*(worker(k) for k in range(conns)))
    result.elapsed_s = time.perf_counter() - begin
    result.warmup_sent, result.warmup_ok = ignored.sent, ignored.ok
    return result


def open_loop(
    port: int,
    paths: Sequence[str],
    rate: float,
    duration_s: float,
    warmup_s: float = 2.0,
    connections: int = 64,
) -> LoadResult:
    """``GET`` ``paths`` (cycled) at ``rate`` per second for ``warmup_s + duration_s``;
    the warm-up's requests are not recorded."""
    started = time.process_time()
    result = asyncio.run(_open_loop(port, paths, rate, duration_s, warmup_s, connections))
    result.cpu_s = time.process_time() - started
    return result


def closed_loop(
    port: int, paths: Sequence[str], connections: int, duration_s: float, warmup_s: float = 2.0
) -> LoadResult:
    """``connections`` clients, each sending its next request when the previous one is answered."""
    started = time.process_time()
    result = asyncio.run(_closed_loop(port, paths, connections, duration_s, warmup_s))
    result.cpu_s = time.process_time() - started
    return result


def redis_latencies(port: int, keys: Sequence[str], n: int, seed: int) -> tuple[list[int], int]:
    """``n`` sequential ``GET`` s of random ``keys`` on one connection: the duration of each
    (ns, the call of the Redis client: request, round trip, reply) and how many were missing."""
    client = redis.Redis(host=HOST, port=port)
    rng = random.Random(seed)
    try:
        for key in keys[:1000]:  # warm-up: connection, code paths
            client.get(key)
        out, missing = [], 0
        for _ in range(n):
            key = rng.choice(keys)
            started = time.perf_counter_ns()
            value = client.get(key)
            out.append(time.perf_counter_ns() - started)
            missing += value is None
        return out, missing
    finally:
        client.close()


def redis_throughput(
    port: int, keys: Sequence[str], start_at: float, duration_s: float, seed: int
) -> tuple[int, float, int]:
    """Sequential ``GET`` s of random ``keys`` from wall-clock ``start_at`` for ``duration_s``:
    ``(lookups, seconds, missing)``. Run in several processes with one ``start_at``."""
    client = redis.Redis(host=HOST, port=port)
    rng = random.Random(seed)
    try:
        client.ping()
        time.sleep(max(0.0, start_at - time.time()))
        count = missing = 0
        began = time.perf_counter()
        end = began + duration_s
        while time.perf_counter() < end:
            for key in rng.choices(keys, k=64):
                missing += client.get(key) is None
            count += 64
        return count, time.perf_counter() - began, missing
    finally:
        client.close()
