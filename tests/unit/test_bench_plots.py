"""The benchmark plots draw from the keys their benchmarks write, and skip without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.plots import draw_all, plot_memory, plot_model, plot_serving

pytest.importorskip("matplotlib")

MODEL = {
    "model.topn_threads": 2,
    "model.topn_per_s_10k": 95_000.0,
    "model.topn_per_s_100k": 15_000.0,
    "model.gemm_ratio_10k": 0.48,
    "model.gemm_ratio_100k": 0.92,
    "model.topn_per_s_1thread_100k": 9_000.0,
    "model.topn_blas_per_s_100k": 4_700.0,
    "model.updates_per_s_100k": 18_000.0,
}
SERVING = {
    "serving.api_workers": 2,
    "serving.api_p50_ms_at_100rps": 2.0,
    "serving.api_p99_ms_at_100rps": 3.5,
    "serving.api_p50_ms_at_500rps": 1.4,
    "serving.api_p99_ms_at_500rps": 2.6,
    "serving.redis_lookup_p50_ms": 0.07,
    "serving.redis_lookup_p99_ms": 0.09,
}
MEMORY = {
    "memory.completejourney.flink_state_bytes_mean": 9_700.0,
    "memory.completejourney.state_bytes_event_ids_mean": 5_000.0,
    "memory.completejourney.state_bytes_vector_mean": 128.0,
    "memory.completejourney.redis_list_bytes_mean": 1_900.0,
    "memory.completejourney.redis_features_bytes_mean": 5_600.0,
}


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("plot", "results"),
    [(plot_model, MODEL), (plot_serving, SERVING), (plot_memory, MEMORY)],
)
def test_each_plot_is_drawn_from_its_keys(plot, results, tmp_path: Path) -> None:
    path = plot(results, tmp_path / "out.png")
    assert path == tmp_path / "out.png"
    assert _is_png(path)


@pytest.mark.parametrize("plot", [plot_model, plot_serving, plot_memory])
def test_a_plot_without_its_keys_is_skipped(plot, tmp_path: Path) -> None:
    assert plot({"pipeline.events_per_s": 1_000.0}, tmp_path / "out.png") is None
    assert not (tmp_path / "out.png").exists()


def test_draw_all_writes_only_the_plots_it_has_keys_for(tmp_path: Path) -> None:
    drawn = draw_all({**MODEL, **MEMORY}, tmp_path)
    assert sorted(p.name for p in drawn) == ["memory_per_user.png", "model_topn.png"]
    assert all(_is_png(p) for p in drawn)
