"""Simulated shoppers with hidden tastes, and how they react to a served list.

The catalogue and the tastes are a :class:`~connectors.datasets.SyntheticShop`'s: items
``i0..`` in categories ``c0..`` with Zipf popularity, each shopper liking three categories with
Dirichlet weights. On top, each shopper likes a few brands (those of items drawn from the
shopper's own tastes). The recommender sees none of this: it sees only events.

A shopper's *match* with an item is in [0, 1]: ``0.8 * w(category) / max(w) + 0.2 * liked
brand``, so 0 for an item outside the shopper's categories and brands, 1 for a liked brand in
the favourite category. Reacting to a list of ``k`` items, the shopper examines position ``p``
(1-based) with probability ``position_decay ** (p - 1)`` and clicks an examined item with
probability ``click_floor + (click_top - click_floor) * match``; a click leads to a cart add
with probability ``cart_rate * match``, a cart add to a purchase with ``purchase_rate``.
Organic browsing (search, category pages: outside the recommendations) draws items as the
synthetic shop's event stream does: ``view``, sometimes ``click``.

State: the shop's arrays (O(items + shoppers)) and one :class:`Shopper` per shopper met
(bounded by ``SimConfig.shoppers``); reactions are pure functions of the random generator.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.api_client import ServedList
from connectors.datasets import SyntheticShop

__all__ = ["Reaction", "Shopper", "ShopperModel", "SimConfig"]


@dataclass(frozen=True)
class SimConfig:
    """The simulated population, its reaction model, and how the run is reported.

    ``min_requests``: only lists served to shoppers past their first ``min_requests`` visits
    enter the CTR timeline (0 = every list); ``bucket_s`` is the timeline's bucket width.
    """

    shoppers: int = 2000
    items: int = 300
    categories: int = 15
    k: int = 10
    new_shopper_share: float = 0.05
    organic_per_visit: float = 3.0
    click_top: float = 0.4
    click_floor: float = 0.02
    position_decay: float = 0.85
    cart_rate: float = 0.3
    purchase_rate: float = 0.5
    brands_liked: int = 3
    min_requests: int = 0
    bucket_s: float = 10.0
    seed: int = 0
    user_prefix: str = "sim-"

    def __post_init__(self) -> None:
        checks = {
            "shoppers": self.shoppers >= 1,
            "items": self.items >= 3,
            "categories": 3 <= self.categories <= self.items,
            "k": 1 <= self.k <= 100,
            "organic_per_visit": self.organic_per_visit >= 0,
            "position_decay": 0 < self.position_decay <= 1,
            "min_requests": self.min_requests >= 0,
            "bucket_s": self.bucket_s > 0,
        }
        probabilities = ("new_shopper_share", "click_top", "click_floor", "cart_rate")
        checks |= {name: 0 <= getattr(self, name) <= 1 for name in probabilities}
        checks["purchase_rate"] = 0 <= self.purchase_rate <= 1
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid simulator configuration: {values}")


@dataclass
class Shopper:
    """One simulated shopper: raw user id, hidden tastes, and visits made so far."""

    user_id: str
    taste: dict[str, float]
    brands: frozenset[str]
    visits: int = 0


@dataclass(frozen=True)
class Reaction:
    """What a shopper did with one served list: the events to send and their counts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    relevant: int = 0  # items of the list that suit the shopper (match > 0)


class ShopperModel:
    """Hidden tastes over the synthetic catalogue, and the shoppers' reactions."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.shop = SyntheticShop(
            config.shoppers, config.items, n_categories=config.categories, seed=config.seed
        )
        self._rng = np.random.default_rng([config.seed, 2])
        self._ids: Iterator[int] = itertools.count()
        self._run = uuid.uuid4().hex[:8]  # event ids stay unique across runs

    def shopper(self, index: int) -> Shopper:
        """Shopper ``index`` (0-based, below ``config.shoppers``), with hidden tastes."""
        seen = self.shop.browse(f"u{index}", 5 * self.config.brands_liked, self._rng)
        brands = [self.attributes(item)["brand"] for item in seen]
        liked = frozenset(brands[: self.config.brands_liked])
        return Shopper(f"{self.config.user_prefix}{index}", self.shop.taste(f"u{index}"), liked)

    def attributes(self, item: str) -> dict[str, Any]:
        """``category``, ``brand`` and ``price`` of a catalogue item; ``{}`` for another id
        (an item the API learnt from other traffic)."""
        number = item.removeprefix("i")
        if item[:1] != "i" or not number.isdigit() or int(number) >= self.config.items:
            return {}
        return self.shop.item_attributes(item)

    def match(self, shopper: Shopper, item: str) -> float:
        """How well ``item`` suits ``shopper``, in [0, 1] (0 for an item not in the catalogue)."""
        attributes = self.attributes(item)
        if not attributes:
            return 0.0
        weight = shopper.taste.get(attributes["category"], 0.0) / max(shopper.taste.values())
        return 0.8 * weight + 0.2 * (attributes["brand"] in shopper.brands)

    def organic(
        self, shopper: Shopper, rng: np.random.Generator, now_ms: int
    ) -> list[dict[str, Any]]:
        """Browsing outside the recommendations: a Poisson number of views and clicks."""
        count = int(rng.poisson(self.config.organic_per_visit))
        index = int(shopper.user_id.removeprefix(self.config.user_prefix))
        items = self.shop.browse(f"u{index}", count, rng) if count else []
        actions = ["click" if rng.random() < 0.3 else "view" for _ in items]
        pairs = zip(items, actions, strict=True)
        return [self._event(shopper, item, action, now_ms, "search") for item, action in pairs]

    def react(
        self, shopper: Shopper, served: ServedList, rng: np.random.Generator, now_ms: int
    ) -> Reaction:
        """The shopper's clicks, cart adds and purchases on ``served`` (in served order)."""
        c, events = self.config, []
        clicks = carts = purchases = relevant = 0
        for position, item in enumerate(served.items, start=1):
            match = self.match(shopper, item)
            relevant += match > 0
            if rng.random() >= c.position_decay ** (position - 1):
                continue  # not examined
            if rng.random() >= c.click_floor + (c.click_top - c.click_floor) * match:
                continue
            extra = {"request_id": served.request_id, "position": position}
            events.append(self._event(shopper, item, "click", now_ms, "home", extra))
            clicks += 1
            if rng.random() < c.cart_rate * match:
                events.append(self._event(shopper, item, "add_to_cart", now_ms, "home", extra))
                carts += 1
                if rng.random() < c.purchase_rate:
                    events.append(self._event(shopper, item, "purchase", now_ms, "home", extra))
                    purchases += 1
        return Reaction(events, clicks, carts, purchases, relevant)

    def _event(
        self,
        shopper: Shopper,
        item: str,
        action: str,
        now_ms: int,
        scene: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        event = {
            "event_id": f"sim-{self._run}-{next(self._ids)}",
            "user_id": shopper.user_id,
            "item_id": item,
            "action": action,
            "ts": now_ms,
            "scene": scene,
        }
        return {**event, **self.attributes(item), **(extra or {})}
