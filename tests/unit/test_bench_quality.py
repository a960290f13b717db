"""The quality benchmark's results file: batch_best follows the batch schedules in it."""

from __future__ import annotations

from bench.quality import best_of_file


def test_batch_best_is_the_best_schedule_and_leaves_matched_variants_out() -> None:
    p = "quality.cj."
    results = {
        p + "batch_6h.hr@10": 0.06,
        p + "batch_6h_repeat.hr@10": 0.11,
        p + "batch_6h_repeat.ndcg@10": 0.06,
        p + "batch_6h_repeat.command": "python -m bench.quality ...",
        p + "batch_6h_repeat_matched.hr@10": 0.5,  # tuned under another model's floor
        p + "batch_best.hr@10": 0.01,  # stale
        p + "online_mf.hr@10": 0.9,
    }
    best = best_of_file(results, "cj")
    assert best == {
        p + "batch_best.hr@10": 0.11,
        p + "batch_best.ndcg@10": 0.06,
        p + "batch_best.is": "batch_6h_repeat",
    }
    assert best_of_file({p + "online_mf.hr@10": 0.9}, "cj") == {}
