"""The clustered (IVF) index: exact when every cluster is probed, high recall when clustered,
and fresh for items the snapshot does not know about."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.candidates import ClusteredIndex
from online_models.topn import top_n


def _catalogue(n: int = 6000, k: int = 16, tastes: int = 40, seed: int = 3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(tastes, k)).astype(np.float32)
    factors = (centers[rng.integers(0, tastes, n)] + rng.normal(scale=0.3, size=(n, k))).astype(
        np.float32
    )
    bias = rng.normal(scale=0.3, size=n).astype(np.float32)
    users = (centers[rng.integers(0, tastes, 64)] + rng.normal(scale=0.3, size=(64, k))).astype(
        np.float32
    )
    return factors, bias, users


def test_probing_every_cluster_is_exact_including_exclusions() -> None:
    factors, bias, users = _catalogue()
    index = ClusteredIndex(n_clusters=30, n_probe=30, head=0, recent=0)
    index.maybe_refresh(factors, bias, now_s=0.0)
    exclude = [list(range(i, i + 40)) for i in range(len(users))]
    rows, scores = index.search(users, factors, bias, 25, exclude)
    want_rows, want_scores = top_n(users, factors, bias, 25, exclude)
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_recall_on_a_clustered_catalogue() -> None:
    factors, bias, users = _catalogue()
    index = ClusteredIndex(n_probe=8)
    index.maybe_refresh(factors, bias, now_s=0.0)
    rows, _ = index.search(users, factors, bias, 20)
    exact, _ = top_n(users, factors, bias, 20)
    pairs = zip(rows.tolist(), exact.tolist(), strict=True)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in pairs])
    assert recall >= 0.9
    assert all(len(set(r)) == 20 for r in rows.tolist())  # no item twice in a list


def test_scores_are_live_and_new_or_recent_items_are_always_candidates() -> None:
    factors, bias, users = _catalogue()
    index = ClusteredIndex(n_probe=2, head=0)
    index.maybe_refresh(factors, bias, now_s=0.0)
    user = users[:1]
    # an item appended after the build, aligned with the user: must win
    grown = np.vstack([factors, 10 * user / np.linalg.norm(user)]).astype(np.float32)
    grown_bias = np.append(bias, 5.0).astype(np.float32)
    rows, scores = index.search(user, grown, grown_bias, 5)
    assert rows[0, 0] == len(factors)
    # an old item that just learned to match the user: found once noted as a positive
    target = int(np.argmin(factors @ user[0]))
    grown[target] = 20 * user / np.linalg.norm(user)
    index.note_positives([target])
    rows, scores = index.search(user, grown, grown_bias, 5)
    assert rows[0, 0] == target
    assert scores[0, 0] == pytest.approx(float(grown[target] @ user[0] + grown_bias[target]))


def test_refresh_schedule() -> None:
    factors, bias, _ = _catalogue(n=2000)
    index = ClusteredIndex(refresh_s=10.0, max_new=100)
    assert index.maybe_refresh(factors, bias, now_s=0.0)  # first build
    assert not index.maybe_refresh(factors, bias, now_s=5.0)
    assert index.maybe_refresh(factors, bias, now_s=10.0)  # period elapsed
    more = np.vstack([factors, factors[:150]])
    assert index.maybe_refresh(more, np.append(bias, bias[:150]), now_s=11.0)  # many new items
    assert index.n_indexed == len(more)


def test_search_before_build_is_an_error() -> None:
    factors, bias, users = _catalogue(n=100)
    with pytest.raises(RuntimeError, match="not built"):
        ClusteredIndex().search(users, factors, bias, 5)
