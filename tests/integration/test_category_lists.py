"""The running job writes per-category trending lists and the item -> category hash."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from connectors.redis_lists import category_trending_key, item_categories_key

pytestmark = pytest.mark.integration


def test_categories_get_their_own_trending_lists(running_job) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    category, other = f"tea-{tag}", f"soap-{tag}"
    now = int(time.time() * 1000)
    sent = [  # (item, category, purchases): two tea items ranked by purchases, one soap item
        (f"green-{tag}", category, 3),
        (f"black-{tag}", category, 1),
        (f"bar-{tag}", other, 2),
    ]
    with running_job.producer() as producer:
        for item, item_category, n in sent:
            for i in range(n):
                user = f"cat-{tag}-{i}"
                event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item,
                         "action": "purchase", "ts": now, "category": item_category}  # fmt: skip
                producer.send(event)
        producer.flush()
    prefix = running_job.settings.redis_prefix

    def ranked(name: str) -> list[str]:
        raw = running_job.redis.get(category_trending_key(prefix, name))
        return [item for item, _ in orjson.loads(raw)] if raw else []

    ticks = running_job.producer()
    last_tick = [0.0]

    def written() -> bool:
        # lists are rewritten as traffic flows: keep a trickle of unrelated views going
        if time.monotonic() - last_tick[0] > 2:
            last_tick[0] = time.monotonic()
            ticks.send({"event_id": uuid.uuid4().hex, "user_id": f"tick-{tag}",
                        "item_id": f"tick-{tag}", "action": "view",
                        "ts": int(time.time() * 1000)})  # fmt: skip
            ticks.flush()
        return len(ranked(category)) == 2 and bool(ranked(other))

    with ticks:
        running_job.wait_for(written, timeout_s=180)
    assert ranked(category) == [f"green-{tag}", f"black-{tag}"]
    assert ranked(other) == [f"bar-{tag}"]
    filed = running_job.redis.hmget(
        item_categories_key(prefix), [f"green-{tag}", f"bar-{tag}", "never-seen"]
    )
    assert filed == [category.encode(), other.encode(), None]
