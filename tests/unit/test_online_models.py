"""Contracts of the online models: determinism, learning, windows, top-N."""

from __future__ import annotations

import pickle

import numpy as np

from online_models.features import UserFeatures
from online_models.implicit_mf import ImplicitMF
from online_models.popularity import WindowedPopularity
from online_models.topn import top_n


def _stream(seed: int, n: int = 3000) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        user = int(rng.integers(0, 50))
        # users of the same parity like the same half of the catalogue
        item = int(rng.integers(0, 20)) * 2 + user % 2
        out.append((f"u{user}", f"i{item}", f"e{i}"))
    return out


def test_same_seed_same_factors_and_pickling_keeps_them() -> None:
    a, b = ImplicitMF(n_factors=8, seed=5), ImplicitMF(n_factors=8, seed=5)
    for user, item, key in _stream(1, 500):
        a.learn_one(user, item, x={"action": "click", "key": key})
        b.learn_one(user, item, x={"action": "click", "key": key})
    np.testing.assert_array_equal(a.items.factors, b.items.factors)
    clone = pickle.loads(pickle.dumps(a))
    assert clone.predict_one("u1", "i3") == a.predict_one("u1", "i3")


def test_model_learns_the_two_taste_groups() -> None:
    model = ImplicitMF(n_factors=16, seed=0)
    for user, item, key in _stream(2):
        model.learn_one(user, item, x={"action": "purchase", "key": key})
    users = np.stack([model.users[f"u{u}"] for u in range(50)])
    rows, _ = top_n(users, model.items.factors, model.items.bias, 10)
    hits = [np.mean([int(model.items.ids[r][1:]) % 2 == u % 2 for r in rows[u]]) for u in range(50)]
    assert np.mean(hits) > 0.9


def test_impressions_are_not_learnt() -> None:
    model = ImplicitMF(n_factors=4)
    model.learn_one("u", "i", x={"action": "impression"})
    assert len(model.items) == 0 and not model.users


def test_windows_slide_and_expire() -> None:
    f = UserFeatures(windows_s=(3600, 86400), out_of_orderness_ms=0)
    hour = 3_600_000
    f.add("a", "click", 10 * hour)
    f.add("b", "click", 10 * hour + hour // 2)
    assert f.window_counts() == {3600: {"click": 2}, 86400: {"click": 2}}
    f.add("c", "view", 12 * hour)
    assert f.window_counts() == {3600: {"view": 1}, 86400: {"click": 2, "view": 1}}
    f.add("d", "view", 40 * hour)
    assert f.window_counts() == {3600: {"view": 1}, 86400: {"view": 1}}
    assert sum(len(b) for b in f.buckets.values()) <= 2, "expired buckets are dropped"


def test_features_are_bounded() -> None:
    f = UserFeatures(recent_max=3, purchased_max=2, categories_max=2)
    for i in range(10):
        f.add(f"i{i}", "purchase", 1_000_000 + i, f"c{i}")
    assert f.recent == ["i7", "i8", "i9"] and f.purchased == ["i8", "i9"]
    assert len(f.categories) == 2


def test_popularity_round_trips() -> None:
    pop = WindowedPopularity(3600)
    for i in range(100):
        pop.add(f"i{i % 7}", 1.0 + i % 3, i * 1000)
    again = WindowedPopularity(3600).load(pop.to_dict())
    assert again.top(5) == pop.top(5)


def test_top_n_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 8)).astype(np.float32)
    b = rng.normal(size=500).astype(np.float32)
    u = rng.normal(size=(20, 8)).astype(np.float32)
    rows, scores = top_n(u, q, b, 10, chunk=7)
    full = u @ q.T + b
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :10], rtol=1e-6)


def test_prefiltered_top_n_is_exact_on_a_large_catalogue() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(20_000, 8)).astype(np.float32)
    b = rng.normal(size=20_000).astype(np.float32)
    u = rng.normal(size=(40, 8)).astype(np.float32)
    u[0] = 0.0  # all scores equal to the bias: many near-ties
    exclude = [list(range(i, 3000, 3)) for i in range(40)]
    rows, scores = top_n(u, q, b, 50, exclude)
    full = u @ q.T + b
    for i, skip in enumerate(exclude):
        full[i, skip] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :50])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :50], rtol=1e-6)
