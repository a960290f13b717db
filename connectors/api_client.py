"""A client of the recommendation API, as a frontend (or the shopper simulator) uses it.

:class:`ApiClient` is the interface: get a served list, post events. :class:`HttpApiClient`
implements it over HTTP with one keep-alive connection pool (``httpx``); tests of code that
uses the interface pass a small fake of it. Nothing else is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

__all__ = ["ApiClient", "ApiError", "HttpApiClient", "ServedList"]


@dataclass(frozen=True)
class ServedList:
    """What ``GET /v1/recommendations`` served: the strategy, its request id, the items and,
    when an experiment assigned the request, the arm."""

    strategy: str
    request_id: str
    items: tuple[str, ...]
    arm: str | None = None


class ApiError(RuntimeError):
    """The API refused a request or did not answer; ``status`` is 0 when it did not answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status


class ApiClient(Protocol):
    """What a shopper-facing frontend needs from the API."""

    def recommend(self, user_id: str, scene: str = "home", k: int = 10) -> ServedList:
        """The list to show ``user_id`` in ``scene``; raises :class:`ApiError`."""
        ...

    def send(self, events: Sequence[dict[str, Any]]) -> int:
        """Post events (all accepted or none); the accepted count; raises :class:`ApiError`."""
        ...


class HttpApiClient:
    """:class:`ApiClient` over HTTP, e.g. ``HttpApiClient("http://127.0.0.1:8000")``."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def recommend(self, user_id: str, scene: str = "home", k: int = 10) -> ServedList:
        params: dict[str, str | int] = {"user_id": user_id, "scene": scene, "k": k}
        body = self._call("GET", "/v1/recommendations", 200, params=params)
        items = tuple(str(item["item_id"]) for item in body["items"])
        arm = body.get("arm")
        strategy, request_id = str(body["strategy"]), str(body["request_id"])
        return ServedList(strategy, request_id, items, None if arm is None else str(arm))

    def send(self, events: Sequence[dict[str, Any]]) -> int:
        return int(self._call("POST", "/v1/events", 202, json=list(events))["accepted"])

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> HttpApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, expected: int, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{method} {self.base_url}{path}: {exc!r}") from exc
        if response.status_code != expected:
            raise ApiError(response.status_code, f"{method} {path}: {response.text[:300]}")
        body = response.json()
        if not isinstance(body, dict):
            raise ApiError(response.status_code, f"{method} {path}: not a JSON object")
        return body
