"""The active-learning simulation's report (benchmarks/active_learning_report.py): curves start
at the shared seed set, differences are paired by run, and issue 33's target ("random's final
mIoU with at least 30 % fewer labels") is counted from each run's curve, all against numbers
worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from active_learning_report import labels_to_reach, markdown, summarize

#: two runs, seed set of 10, 10 per round, 2 rounds; mIoU per strategy and round
CURVES = {
    (1, 0): {"random": [0.20, 0.30], "rank": [0.25, 0.30], "suggest": [0.32, 0.33]},
    (1, 1): {"random": [0.10, 0.20], "rank": [0.10, 0.10], "suggest": [0.15, 0.25]},
}
SEED_ROUND = {(1, 0): 0.10, (1, 1): 0.05}


def _records() -> dict[tuple, dict]:
    records = {}
    for (m, s), by in CURVES.items():
        records[(m, s, "seed", 0)] = {"labelled": 10, "mIoU": SEED_ROUND[(m, s)]}
        for name, values in by.items():
            for k, v in enumerate(values, 1):
                records[(m, s, name, k)] = {"labelled": 10 + 10 * k, "mIoU": v}
    return records


def test_labels_to_reach_is_the_first_label_count_at_or_above_the_target() -> None:
    curve = [(10, 0.1), (20, 0.3), (30, 0.25), (40, 0.31)]
    assert labels_to_reach(curve, 0.3) == 20
    assert labels_to_reach(curve, 0.32) is None


def test_the_summary_pairs_by_run_and_counts_the_target_by_hand() -> None:
    summary = summarize(_records())
    assert summary["complete_runs"] == 2
    # suggest − random at 30 labels: +0.03 and +0.05 → mean +0.04; at 20: +0.12 and +0.05
    at30 = summary["differences"]["suggest"][2]
    assert at30["labelled"] == 30 and at30["mean"] == pytest.approx(0.04)
    assert summary["differences"]["suggest"][1]["mean"] == pytest.approx(0.085)
    assert summary["differences"]["rank"][0]["mean"] == 0  # the shared seed set
    # over rounds 1-2: rank (0.05 + 0)/2 = 0.025 and (0 − 0.1)/2 = −0.05 → mean −0.0125
    assert summary["over_rounds"]["rank"]["mean"] == pytest.approx(-0.0125)
    # both runs are member 1: one generator, its seeds' mean, no interval from one value
    by_generator = summary["over_rounds_by_generator"]["rank"]
    assert by_generator["n"] == 1 and by_generator["ci95"] is None
    assert by_generator["mean"] == pytest.approx(-0.0125)
    # random's final: 0.30 (run 0), 0.20 (run 1); ≤ 30 % fewer of 30 = 21 labels allowed
    target = summary["target"]
    assert target["allowed_labels"] == 21 and target["final_labels"] == 30
    reach = {(r["member"], r["seed"]): r["reach"] for r in summary["runs"]}
    assert reach[(1, 0)] == {"random": 30, "rank": 30, "suggest": 20}
    assert reach[(1, 1)] == {"random": 30, "rank": None, "suggest": 30}
    assert target["suggest"]["runs_reaching_target"] == 1
    assert target["rank"]["runs_reaching_target"] == 0
    # mean curves: random ends at 0.25; suggest's mean at 20 labels is 0.235, at 30 0.29
    assert target["suggest"]["mean_curve_reach"] == 30
    assert "not reached" in markdown(summary)


def test_an_unfinished_run_is_listed_but_left_out_of_the_differences() -> None:
    records = _records()
    del records[(1, 1, "suggest", 2)]
    summary = summarize(records)
    assert summary["complete_runs"] == 1 and len(summary["runs"]) == 2
    assert summary["differences"]["suggest"][2]["n"] == 1
