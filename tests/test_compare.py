"""`sanet compare`: its numbers against the runs it aggregated, its statistics against
hand-computed values, and resuming (finished runs skipped, changed recipes refused)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe
from sanet import stats
from sanet.cli import main
from sanet.experiments import compare as C
from sanet.rundir import RunDir

TINY = tiny_recipe(backbone="resnet18d", train__log_every=1, train__val_every=0)

# Student's t quantiles t(0.975, df) from a printed table, independent of scipy.
T975 = {1: 12.7062, 2: 4.3027}


def test_mean_std_and_paired_difference_by_hand() -> None:
    assert stats.mean_std([0.3]) == (0.3, 0.0)
    mean, sd = stats.mean_std([0.1, 0.2, 0.6])
    assert math.isclose(mean, 0.3) and math.isclose(sd, math.sqrt((0.04 + 0.01 + 0.09) / 2))
    a, b = [0.40, 0.50, 0.45], [0.45, 0.52, 0.53]  # b − a = 0.05, 0.02, 0.08
    d = stats.paired_difference(a, b)
    sd = math.sqrt(((0.05 - 0.05) ** 2 + (0.02 - 0.05) ** 2 + (0.08 - 0.05) ** 2) / 2)
    half = T975[2] * sd / math.sqrt(3)
    assert d["n"] == 3 and math.isclose(d["mean"], 0.05) and math.isclose(d["std"], sd)
    assert d["ci95"] == pytest.approx([0.05 - half, 0.05 + half], rel=1e-4)
    # paired t statistic = mean / (sd/√n) = 0.05 / 0.01732 = 2.887 with 2 df: p = 0.102
    assert math.isclose(d["p_value"], 0.1020, abs_tol=5e-4)
    single = stats.paired_difference([0.4], [0.5])
    assert single["ci95"] is None and single["p_value"] is None


def test_summarize_per_class_skips_absent_classes() -> None:
    runs = [
        C.RunResult("fcn", 0, "r0", 0.3, 0.8, [0.9, None, 0.2], 0.3, 2, 1.0),
        C.RunResult("fcn", 1, "r1", 0.5, 0.9, [0.7, 0.4, None], 0.5, 2, 3.0),
    ]
    s = C.summarize(runs, ["fcn"], ["bg", "a", "b"])["per_model"]["fcn"]
    assert s["IoU_mean"] == pytest.approx([0.8, 0.4, 0.2])
    assert s["seconds_mean"] == 2.0 and s["mIoU_mean"] == pytest.approx(0.4)


def test_compare_aggregates_its_runs_and_resumes(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    args = [
        "compare",
        "configs/demo_scratch.yaml",
        "--models",
        "sanet",
        "fcn",
        "--seeds",
        "2",
        "--set",
        *TINY,
        "--out",
        str(out),
    ]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(args) == 0
    payload = json.loads((out / "compare.json").read_text())
    per_model = payload["per_model"]
    assert (out / "compare.png").is_file()
    finals = {}
    for model in ("sanet", "fcn"):
        for seed in (0, 1):
            log = out / "runs" / f"{model}-seed{seed}" / "metrics.jsonl"
            val = [json.loads(x) for x in log.read_text().splitlines() if '"val"' in x]
            assert val[-1]["step"] == 2
            finals[model, seed] = val[-1]["mIoU"]
    for model in ("sanet", "fcn"):
        stats = payload["per_model"][model]
        values = [finals[model, 0], finals[model, 1]]
        assert stats["mIoU"] == values
        assert math.isclose(stats["mIoU_mean"], (values[0] + values[1]) / 2)
        assert math.isclose(stats["mIoU_std"], abs(values[0] - values[1]) / math.sqrt(2))
    diffs = [finals["fcn", s] - finals["sanet", s] for s in (0, 1)]
    paired = payload["paired"]["fcn"]
    mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
    assert paired["vs"] == "sanet" and math.isclose(paired["mean"], mean, abs_tol=1e-12)
    half = T975[1] * sd / math.sqrt(2)
    assert paired["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-4, abs=1e-9)
    # each run's model card gains its model's seeds and spread (the numbers of metrics.jsonl)
    card = (out / "runs/fcn-seed1/model/README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    seeds = front["model-index"][0]["results"][0]["metrics"][-1]
    assert seeds["args"]["seeds"] == [0, 1]
    assert seeds["value"] == round((finals["fcn", 0] + finals["fcn", 1]) / 2, 4)
    assert f"| 1 (this folder) | {finals['fcn', 1]:.4f} |" in card
    assert f"| 0 | {finals['fcn', 0]:.4f} |" in card and "Against `sanet`" in card

    # Re-running skips every finished run: training must not start again.
    RunDir(out / "runs/fcn-seed1").compare_run.unlink()  # as if that run had been interrupted
    started = []
    real_fit = C.ensure_run

    def counting(cfg, run, model, seed, *rest):
        if not run.compare_run.is_file():
            started.append(run.root.name)
        return real_fit(cfg, run, model, seed, *rest)

    monkeypatch.setattr(C, "ensure_run", counting)
    assert main(args) == 0
    assert started == ["fcn-seed1"]  # resumed from last.pt (already at the last step)
    again = json.loads((out / "compare.json").read_text())["per_model"]
    assert {m: again[m]["mIoU"] for m in again} == {m: s["mIoU"] for m, s in per_model.items()}
    assert main([*args[:-2], "train.lr=0.5", "--out", str(out)]) == 2  # another recipe: refused
