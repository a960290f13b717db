"""Health of the API's dependencies: Redis, the Kafka bootstrap servers and the job.

Each check is bounded by a timeout and returns ``{"ok": bool, "detail": str}``; nothing is
cached. Redis and Kafka are required (the API cannot serve or accept events without them);
the job is informative only: lists keep being served from Redis while it restarts.
"""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from flywheel.settings import Settings
from serving.store import RedisStore

__all__ = ["REQUIRED", "check_all"]

REQUIRED = ("redis", "kafka")
"""Components whose failure makes ``/healthz`` answer 503."""

Check = dict[str, Any]


async def check_all(
    settings: Settings, store: RedisStore, timeout_s: float = 1.0
) -> dict[str, Check]:
    """Run every check concurrently: ``{"redis": ..., "kafka": ..., "job": ...}``."""
    redis_check, kafka_check, job_check = await asyncio.gather(
        _redis(store, timeout_s),
        _kafka(settings.kafka_bootstrap, timeout_s),
        _job(_job_metrics_url(settings), timeout_s),
    )
    return {"redis": redis_check, "kafka": kafka_check, "job": job_check}


async def _redis(store: RedisStore, timeout_s: float) -> Check:
    try:
        ok = await asyncio.wait_for(store.ping(), timeout_s)
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"ok": ok, "detail": "PING answered" if ok else "PING not answered"}


async def _kafka(bootstrap: str, timeout_s: float) -> Check:
    """Reachable when any bootstrap server accepts a TCP connection."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{server.strip()}: {type(exc).__name__}")
            continue
        writer.close()
        return {"ok": True, "detail": f"bootstrap {server.strip()} reachable"}
    return {"ok": False, "detail": "; ".join(errors)}


async def _job(url: str, timeout_s: float) -> Check:
    def fetch() -> int:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)

    try:
        status = await asyncio.to_thread(fetch)
    except Exception as exc:
        return {"ok": False, "detail": f"{url}: {type(exc).__name__}"}
    return {"ok": status == 200, "detail": f"{url}: HTTP {status}"}


def _job_metrics_url(settings: Settings) -> str:
    """``settings.job_metrics_url``, else the job's metrics endpoint on this host."""
    if settings.job_metrics_url:
        return settings.job_metrics_url
    host = settings.metrics_bind if settings.metrics_bind not in ("", "0.0.0.0", "::") else None
    return f"http://{host or '127.0.0.1'}:{settings.metrics_port}/metrics"
