"""Model micro-benchmarks, no Flink: online-MF updates, batched top-N, and the GEMM ceiling.

For each catalogue size (10k and 100k items; 1M with ``--full``), 32 factors:

- ``ImplicitMF.update`` throughput (4 negatives) on synthetic events from
  :class:`~connectors.datasets.SyntheticShop` (20k users); the item table is first filled with
  every item through ``ItemTable.ensure``, whose rate is reported too;
- batched exact top-50 lists per second through :func:`online_models.topn.top_n`, 256 users
  per batch, no exclusions, with as many threads as numpy's BLAS uses (``model.topn_threads``)
  and with one thread (keys ``*_1thread``; BLAS limited to one thread too, as in the job);
- the GFLOP/s of a plain float32 product of the same shape (256 x 32 @ 32 x n_items) into a
  preallocated output, at the same two thread counts, and the ratio of top-N's effective FLOP
  rate (2 * 32 * n_items per list) to the product's at the same thread count (``gemm_ratio``);
- the previous implementation, :func:`online_models.topn.top_n_blas` (one BLAS product per
  chunk, numpy selection) at the same two BLAS thread counts, as the baseline
  (``topn_blas_per_s``, ``gemm_ratio_blas``); and the product allocating its result as that
  path does (``gemm_alloc_gflops``, all threads).

Every figure is the median of a few repeats after a warm-up, timed with ``perf_counter``.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from bench.common import Results, median_seconds, say
from connectors.datasets import SyntheticShop
from online_models.implicit_mf import ImplicitMF
from online_models.topn import top_n, top_n_blas

__all__ = ["filled_model", "run"]

N_FACTORS = 32
N_NEGATIVES = 4
TOP_N = 50
BATCH = 256
N_USERS = 20_000
_MAX_LEARNT_ITEMS = 100_000


def _label(n_items: int) -> str:
    """``10k``, ``100k``, ``1m``."""
    return f"{n_items // 1_000_000}m" if n_items >= 1_000_000 else f"{n_items // 1000}k"


def filled_model(n_items: int) -> tuple[ImplicitMF, float]:
    """A model whose item table holds ``i0..i{n-1}``, and the rate of adding them (items/s)."""
    model = ImplicitMF(n_factors=N_FACTORS, n_negatives=N_NEGATIVES, seed=0, max_items=n_items)
    started = time.perf_counter()
    for i in range(n_items):
        model.items.ensure(f"i{i}")
    return model, n_items / (time.perf_counter() - started)


def _update_rate(model: ImplicitMF, n_items: int, n_events: int, repeats: int) -> float:
    """Median updates/s of ``ImplicitMF.update`` over ``repeats`` passes of ``n_events``."""
    shop = SyntheticShop(N_USERS, n_items, seed=0)
    events = [
        (e["user_id"], e["item_id"], model.weight_of(e["action"]), e["event_id"])
        for e in shop.events(n_events)
    ]
    vectors = {u: model.new_user_vector(u) for u, _, _, _ in events}
    for user, item, weight, key in events[:1000]:  # warm-up
        model.update(vectors[user], item, weight, key)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for user, item, weight, key in events:
            model.update(vectors[user], item, weight, key)
        rates.append(len(events) / (time.perf_counter() - started))
    return float(np.median(rates))


def _learning(n_items: int, n_events: int, repeats: int) -> tuple[Results, np.ndarray, np.ndarray]:
    """Item-table fill rate and update rate on ``n_items``; also the learnt table's arrays."""
    label = _label(n_items)
    say(f"model: filling an item table of {n_items:,} items")
    model, ensure_rate = filled_model(n_items)
    say(f"model: {n_events:,} updates x {repeats} on {label} items")
    updates = _update_rate(model, n_items, n_events, repeats)
    results: Results = {
        f"model.new_items_per_s_{label}": round(ensure_rate, 1),
        f"model.updates_per_s_{label}": round(updates, 1),
    }
    return results, model.items.factors.copy(), model.items.bias.copy()


def _topn_and_gemm(
    factors: np.ndarray, bias: np.ndarray, repeats: int, min_time_s: float
) -> dict[str, float]:
    """Lists/s of batched top-N (and of the previous BLAS path) and GFLOP/s of the bare
    product, for one catalogue: on every BLAS thread (``top_n`` with as many), then on one."""
    rng = np.random.default_rng(1)
    users = rng.normal(0.0, 0.1, (BATCH, N_FACTORS)).astype(np.float32)
    n_items = factors.shape[0]
    flops = BATCH * 2.0 * N_FACTORS * n_items
    rhs = np.ascontiguousarray(factors.T)
    out = np.empty((BATCH, n_items), dtype=np.float32)
    threads = _blas_threads()
    figures: dict[str, float] = {}
    for suffix, limit in (("", threads), ("_1thread", 1)):
        with threadpool_limits(limit, "blas"):
            lists = partial(top_n, users, factors, bias, TOP_N, threads=limit)
            topn_s = median_seconds(lists, repeats, min_time_s)
            gemm_s = median_seconds(lambda: np.matmul(users, rhs, out=out), repeats, min_time_s)
            blas = partial(top_n_blas, users, factors, bias, TOP_N)
            blas_s = median_seconds(blas, repeats, min_time_s)
        figures |= {
            f"topn_per_s{suffix}": BATCH / topn_s,
            f"gemm_gflops{suffix}": flops / gemm_s / 1e9,
            f"gemm_ratio{suffix}": gemm_s / topn_s,
            f"topn_blas_per_s{suffix}": BATCH / blas_s,
            f"gemm_ratio_blas{suffix}": gemm_s / blas_s,
        }
    alloc_s = median_seconds(lambda: users @ factors.T, repeats, min_time_s)
    return figures | {"gemm_alloc_gflops": flops / alloc_s / 1e9}


def _blas_threads() -> int:
    """Threads numpy's BLAS uses by default here (all cores unless limited)."""
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"),
               default=1)  # fmt: skip


def run(quick: bool = False, full: bool = False) -> Results:
    """Run the model benchmarks; returns ``model.*`` keys."""
    sizes = [10_000, 100_000] + ([1_000_000] if full else [])
    n_events, repeats, min_time_s = (5_000, 3, 0.2) if quick else (20_000, 5, 0.5)
    results: Results = {
        "model.n_factors": N_FACTORS,
        "model.n_negatives": N_NEGATIVES,
        "model.topn_batch_users": BATCH,
        "model.top_n": TOP_N,
        "model.topn_threads": _blas_threads(),
    }
    for n_items in sizes:
        label = _label(n_items)
        if n_items <= _MAX_LEARNT_ITEMS:
            learnt, factors, bias = _learning(n_items, n_events, repeats)
            results.update(learnt)
        else:  # filling 1M items one by one takes minutes: score random factors instead
            rng = np.random.default_rng(2)
            factors = rng.normal(0.0, 0.1, (n_items, N_FACTORS)).astype(np.float32)
            bias = np.zeros(n_items, dtype=np.float32)
        say(f"model: top-{TOP_N} in batches of {BATCH} and the bare product on {label} items")
        for name, value in _topn_and_gemm(factors, bias, repeats, min_time_s).items():
            results[f"model.{name}_{label}"] = round(value, 4 if "ratio" in name else 2)
    results["model.updates_per_s"] = results["model.updates_per_s_100k"]
    results["model.date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results
