"""The quality benchmark's results file: batch_best follows the batch schedules in it."""

from __future__ import annotations

import json

from bench.quality import best_of_file
from bench.quality_report import frontiers


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


def test_frontiers_come_from_each_strategys_own_tuning_first() -> None:
    def params(part: str, hr: float) -> str:
        return json.dumps({part: {"tuning_frontier": [[0.01, hr]], "tuning_hr": hr}})

    results = {
        "quality.cj.chosen_params": params("batch_repeat", 0.2)[:-1] + ', "repeat": {}}',
        "quality.cj.online_mf.chosen_params": params("repeat", 0.3),
    }
    found = frontiers(results, "cj")
    assert found["online_mf"]["tuning_hr"] == 0.3
    assert found["batch_6h_repeat"]["tuning_hr"] == 0.2  # from the complete run
    assert "batch_6h_repeat_matched" not in found  # never the unmatched batch's tuning
