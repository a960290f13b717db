"""Clustered (IVF) against exact top-N retrieval: lists/s and recall, on learnt and random tables.

Two item tables, each scored for 256 users with the job's defaults (top 50, ``ann_probe`` 8,
single-threaded BLAS as in the job):

- **learnt**: :class:`~online_models.implicit_mf.ImplicitMF` trained by one pass over the
  first ``cj_events`` Complete Journey purchases (real structure: departments, popular
  staples); the users are 256 of the households it learnt;
- **tastes**: 100,000 items whose factors lie around 200 taste centres (plus noise, and a
  bias), users near those centres: the shape of a well-trained model of a shop with distinct
  tastes (synthetic);
- **random**: 100,000 items with their initial (random) factors and 256 random users, the
  catalogue of the pipeline benchmark. Random vectors have no cluster structure, so this is
  the index's worst case for recall and only its speed is representative.

One pass over groceries leaves item biases dominant (lists are close to popularity, see the
quality results), so on the learnt table the always-scored popular items carry most of the
recall.

Recall@50 is ``|clustered list ∩ exact list| / 50``, averaged over users. Keys:
``retrieval.<table>.{exact,clustered}_lists_per_s``, ``retrieval.<table>.recall_at_50``,
``retrieval.<table>.items``, ``retrieval.clustered_build_s_100k``.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import Results, median_seconds, say
from bench.model import N_FACTORS, filled_model
from connectors.datasets import completejourney_events
from flywheel.settings import load_settings
from online_models.candidates import ClusteredIndex
from online_models.implicit_mf import ImplicitMF
from online_models.topn import top_n

__all__ = ["run"]

TOP_N = 50
USERS = 256


def _learnt_table(n_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item factors, biases and 256 user vectors after one pass over Complete Journey."""
    model = ImplicitMF(n_factors=N_FACTORS, n_negatives=4, seed=0)
    started = time.perf_counter()
    for i, event in enumerate(completejourney_events(limit=n_events)):
        model.learn_one(event["user_id"], event["item_id"], x={"action": "purchase"})
        if i and i % 200_000 == 0:
            say(f"retrieval: learnt {i:,} purchases ({time.perf_counter() - started:.0f} s)")
    rng = np.random.default_rng(0)
    users = list(model.users)
    picked = rng.choice(len(users), min(USERS, len(users)), replace=False)
    vectors = np.stack([model.users[users[i]] for i in picked]).astype(np.float32)
    return model.items.factors.copy(), model.items.bias.copy(), vectors


def _random_table(n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model, _ = filled_model(n_items)
    rng = np.random.default_rng(1)
    users = rng.normal(0.0, 0.1, (USERS, N_FACTORS)).astype(np.float32)
    return model.items.factors.copy(), model.items.bias.copy(), users


def _tastes_table(n_items: int, tastes: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(0.0, 0.5, (tastes, N_FACTORS)).astype(np.float32)
    noise = rng.normal(0.0, 0.3, (n_items, N_FACTORS))
    factors = (centres[rng.integers(0, tastes, n_items)] + noise).astype(np.float32)
    bias = rng.normal(0.0, 0.5, n_items).astype(np.float32)
    users = centres[rng.integers(0, tastes, USERS)] + rng.normal(0.0, 0.3, (USERS, N_FACTORS))
    return factors, bias, users.astype(np.float32)


def _compare(
    name: str, factors: np.ndarray, bias: np.ndarray, users: np.ndarray, repeats: int
) -> Results:
    defaults = load_settings()
    index = ClusteredIndex(n_probe=defaults.ann_probe, refresh_s=defaults.ann_refresh_s)
    started = time.perf_counter()
    index.maybe_refresh(factors, bias, now_s=0.0)
    build_s = time.perf_counter() - started
    exact_rows, _ = top_n(users, factors, bias, TOP_N)
    rows, _ = index.search(users, factors, bias, TOP_N)
    pairs = zip(rows.tolist(), exact_rows.tolist(), strict=True)
    recall = float(np.mean([len(set(a) & set(b)) / TOP_N for a, b in pairs]))
    exact_s = median_seconds(lambda: top_n(users, factors, bias, TOP_N), repeats)
    clustered_s = median_seconds(lambda: index.search(users, factors, bias, TOP_N), repeats)
    say(
        f"retrieval: {name} ({len(factors):,} items): exact {len(users) / exact_s:,.0f} lists/s, "
        f"clustered {len(users) / clustered_s:,.0f} lists/s, recall@{TOP_N} {recall:.3f}"
    )
    return {
        f"retrieval.{name}.items": len(factors),
        f"retrieval.{name}.exact_lists_per_s": round(len(users) / exact_s, 1),
        f"retrieval.{name}.clustered_lists_per_s": round(len(users) / clustered_s, 1),
        f"retrieval.{name}.recall_at_50": round(recall, 4),
        f"retrieval.{name}.build_s": round(build_s, 3),
        f"retrieval.{name}.clusters": int(index.centroids.shape[0]),
    }


def run(quick: bool = False) -> Results:
    """Run both comparisons; returns ``retrieval.*`` keys."""
    repeats = 3 if quick else 5
    cj_events = 400_000 if quick else 1_469_307
    results: Results = {"retrieval.top_n": TOP_N, "retrieval.users": USERS}
    with threadpool_limits(1, "blas"):
        say("retrieval: random 100k-item table")
        results.update(_compare("random_100k", *_random_table(100_000), repeats))
        say("retrieval: 100k items around 200 taste centres")
        results.update(_compare("tastes_100k", *_tastes_table(100_000), repeats))
        say(f"retrieval: training on {cj_events:,} Complete Journey purchases")
        results.update(_compare("completejourney", *_learnt_table(cj_events), repeats))
    results["retrieval.cj_events"] = cj_events
    results["retrieval.date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results
