"""The learning study's statistics (benchmarks/learning_stats.py): members are the unit, seeds are
averaged inside a member, and the context-class gap is paired by member."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from learning_stats import summarize_final, t_interval


def test_t_interval_by_hand() -> None:
    # mean 0.2, sd 0.1, n 3: half-width t(0.975, 2) · 0.1/√3 = 4.302653 · 0.057735 = 0.248414;
    # t = 0.2/0.057735 = 3.4641 with 2 df: two-sided p = 1 − t/√(t² + 2) = 1 − 3.4641/√14
    out = t_interval([0.1, 0.3, 0.2])
    assert out["mean"] == pytest.approx(0.2) and out["std"] == pytest.approx(0.1)
    assert out["ci95"] == pytest.approx([0.2 - 0.248414, 0.2 + 0.248414], abs=1e-6)
    assert out["p_value"] == pytest.approx(1 - 3.4641016 / 14**0.5, abs=1e-6)
    assert t_interval([0.5])["ci95"] is None


def _payload(runs: dict[tuple[str, int], float], iou: dict[str, list]) -> dict:
    models = sorted({m for m, _ in runs}, key=["sanet", "fcn", "sanet_se"].index)
    return {
        "models": models,
        "seeds": sorted({s for _, s in runs}),
        "class_names": ["background", "a/x@plain", "a/x@grainy", "b/y"],
        "per_model": {m: {"IoU_mean": iou[m]} for m in models},
        "runs": [{"model": m, "seed": s, "mIoU": v} for (m, s), v in runs.items()],
    }


def test_members_are_the_unit() -> None:
    iou = {"sanet": [0.9, 0.5, 0.3, 0.6], "fcn": [0.9, 0.2, 0.2, 0.5], "sanet_se": [0.9] * 4}
    compares = {
        # member 0: SA − FCN per seed 0.10 and 0.30 (mean 0.20); SA − SE 0.0 and 0.1
        0: _payload(
            {
                ("sanet", 0): 0.5,
                ("fcn", 0): 0.4,
                ("sanet_se", 0): 0.5,
                ("sanet", 1): 0.6,
                ("fcn", 1): 0.3,
                ("sanet_se", 1): 0.5,
            },
            iou,
        ),
        # member 1: SA − FCN −0.05 and −0.15 (mean −0.10); SA − SE −0.1 both
        1: _payload(
            {
                ("sanet", 0): 0.3,
                ("fcn", 0): 0.35,
                ("sanet_se", 0): 0.4,
                ("sanet", 1): 0.25,
                ("fcn", 1): 0.4,
                ("sanet_se", 1): 0.35,
            },
            iou,
        ),
        # member 2: no difference on either seed
        2: _payload(
            {(m, s): 0.4 for m in ("sanet", "fcn", "sanet_se") for s in (0, 1)},
            iou,
        ),
    }
    members = {m: {"num_classes": 4 + m, "colour_info": 0.1 * (m + 1)} for m in (0, 1, 2)}
    out = summarize_final(compares, members)
    d = out["differences"]["sanet-fcn"]
    # member means +0.20, −0.10, 0: mean 0.033333, sd √((0.1667² + 0.1333² + 0.0333²)/2)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.1 / 3)
    assert d["std"] == pytest.approx(0.152753, abs=1e-6)
    assert d["positive_members"] == 1 and d["all_runs"]["n"] == 6
    # seed sd inside members: sd(0.1, 0.3) = 0.2/√2, sd(−0.05, −0.15) = 0.1/√2, and 0: root
    # mean square √((0.02 + 0.005 + 0)/3) = 0.091287
    assert d["seed_sd_within_member"] == pytest.approx(0.091287, abs=1e-6)
    assert out["differences"]["sanet-sanet_se"]["mean"] == pytest.approx((0.05 - 0.1 + 0) / 3)
    rows = {r["member"]: r for r in out["members"]}
    assert rows[0]["mIoU"]["sanet"] == pytest.approx(0.55)
    # the context classes (1, 2) against the other object class (3), per model
    assert rows[0]["context"]["sanet"] == pytest.approx({"pair": 0.4, "other": 0.6})
    gap = out["context_classes"]["sanet-fcn"]
    assert gap["pair_classes"]["mean"] == pytest.approx(0.4 - 0.2)
    assert gap["other_classes"]["mean"] == pytest.approx(0.6 - 0.5)
    # the OLS slope on colour_info (0.1, 0.2, 0.3): Sxy / Sxx = −0.02 / 0.02 = −1; a property
    # the members do not record is left out
    pred = out["predictors"]["sanet-fcn"]
    assert pred["colour_info"]["slope"] == pytest.approx(-1.0)
    assert pred["colour_info"]["spearman_rho"] == pytest.approx(-0.5)
    assert "clutter" not in pred
