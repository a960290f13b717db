"""The compiled learning step against the loss it minimises, and the negative sampler's stream."""

from __future__ import annotations

import numpy as np

from online_models.implicit_mf import ImplicitMF, stable_seed
from online_models.mf_kernel import CLIP, sgd_step, splitmix_rows

_MASK64 = (1 << 64) - 1


def _splitmix_reference(state: int, positive: int, n_rows: int, wanted: int) -> list[int]:
    """SplitMix64 (Steele, Lea, Flood 2014) in Python integers, the stream the sampler follows."""
    picks: list[int] = []
    while len(picks) < wanted:
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        row = (z ^ (z >> 31)) % n_rows
        if row != positive and row not in picks:
            picks.append(row)
    return picks


def test_sampler_follows_the_splitmix64_stream_and_skips_repeats() -> None:
    for key, n_rows, wanted in (("e1", 100_000, 4), ("e2", 6, 5), ("e3", 2, 1), ("x", 7, 6)):
        state = stable_seed(key, 42) | 42 << 32
        out = np.empty(wanted, np.int64)
        splitmix_rows(np.uint64(state), 1, n_rows, out)
        assert out.tolist() == _splitmix_reference(state, 1, n_rows, wanted)
        assert 1 not in out.tolist() and len(set(out.tolist())) == wanted


def _loss_gradients(q, b, u, weight, l2):
    """Gradients of w * -log(s(x_0)) + sum_j -log(1 - s(x_j)) + l2/2 |.|^2, in float64."""
    q, b, u = q.astype(np.float64), b.astype(np.float64), u.astype(np.float64)
    scores = np.clip(q @ u + b, -CLIP, CLIP)
    g = 1 / (1 + np.exp(-scores))
    g[0] = weight * (g[0] - 1)
    return g @ q + l2 * u, np.outer(g, u) + l2 * q, g


def test_step_applies_the_loss_gradients_to_the_listed_rows_only() -> None:
    rng = np.random.default_rng(0)
    factors = rng.normal(0, 0.3, (50, 16)).astype(np.float32)
    bias = rng.normal(0, 0.1, 50).astype(np.float32)
    user = rng.normal(0, 0.3, 16).astype(np.float32)
    rows = np.array([7, 3, 41, 0], np.int64)
    before_f, before_b, before_u = factors.copy(), bias.copy(), user.copy()
    d_f, d_b, grad_u = np.empty((4, 16), np.float32), np.empty(4, np.float32), np.empty_like(user)
    sgd_step(factors, bias, rows, user, 2.0, 0.05, 0.01, d_f, d_b, grad_u)
    want_u, want_q, want_b = _loss_gradients(before_f[rows], before_b[rows], before_u, 2.0, 0.01)
    np.testing.assert_allclose(grad_u, want_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_f, -0.05 * want_q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_b, -0.05 * want_b, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(factors[rows], before_f[rows] + d_f)
    np.testing.assert_array_equal(bias[rows], before_b[rows] + d_b)
    untouched = np.setdiff1d(np.arange(50), rows)
    np.testing.assert_array_equal(factors[untouched], before_f[untouched])
    np.testing.assert_array_equal(user, before_u)  # the model's River optimiser moves the user


def test_extreme_scores_are_clipped_before_the_sigmoid() -> None:
    factors, bias = np.full((2, 1), -100.0, np.float32), np.zeros(2, np.float32)
    user = np.ones(1, np.float32)
    d_f, d_b, grad_u = np.empty_like(factors), np.empty_like(bias), np.empty_like(user)
    sgd_step(factors, bias, np.array([0, 1], np.int64), user, 1.0, 1.0, 0.0, d_f, d_b, grad_u)
    at_clip = 1 / (1 + np.exp(CLIP))  # sigmoid(-CLIP) ~ 9e-14, where sigmoid(-100) ~ 4e-44
    np.testing.assert_allclose(d_b, [1 - at_clip, -at_clip], rtol=1e-5)


def test_model_update_steps_the_user_with_its_river_optimiser() -> None:
    model = ImplicitMF(n_factors=8, n_negatives=3, seed=3, learning_rate=0.1)
    for i in range(20):
        model.items.ensure(f"i{i}")
    user = model.new_user_vector("u")
    start = user.copy()
    before = model.items.factors.copy()
    deltas = model.update(user, "i4", 4.0, "e9")
    rows = [model.items.index[i] for i in deltas.items]
    assert deltas.items[0] == "i4" and len(set(rows)) == 4
    want_u, _, _ = _loss_gradients(before[rows], np.zeros(4, np.float32), start, 4.0, model.l2)
    np.testing.assert_allclose(user, start - 0.1 * want_u, rtol=1e-5, atol=1e-6)
    assert model.predict_one("nobody", "i4") == 0.0
