"""Does bf16 training from scratch reach float32's mIoU? (issue 35 part 2; docs/benchmarks.md,
"CPU precision", "Quality").

Two arms per setting, paired by seed (same initialisation, same sample order):

- ``fp32``: ``train.amp=none``, contiguous layout;
- ``bf16``: ``train.amp=bf16`` + ``train.channels_last=true``, what ``amp=auto`` runs on a CPU
  with bf16 units (``sanet.devices.choose_precision``). On a CPU without them PyTorch emulates
  bf16: slower, but the numbers still answer the quality question.

Settings: the from-scratch demo recipe (``src/sanet/configs/demo_scratch.yaml``: SANet-resnet18d from scratch, 96²,
384 steps of 16, on one thread here instead of its pinned two) and three members of the scene
family at the learning study's budget (``benchmarks/learning_study.py``: its frozen recipe, 48²,
320 steps of 8). Every arm is one ``sanet compare`` (resumable); seed 0 of every setting runs
first, then seed 1, then seed 2, so a stopped study holds whole seeds.

    python benchmarks/precision_quality.py run --out runs/precision-quality
    python benchmarks/precision_quality.py report --out runs/precision-quality --to docs/precision
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from learning_study import BUDGET, FROZEN, member_overrides  # noqa: E402

DEMO = HERE.parent / "src" / "sanet" / "configs" / "demo_scratch.yaml"
LEARNING = HERE / "learning_recipe.yaml"
SEEDS = 3
#: family members that learn at the learning study's budget (docs/learning.md: val mIoU
#: 0.29, 0.36 and 0.40 for SANet); member 0 learns nothing there, so it could not show a loss
MEMBERS = (1, 6, 9)
ARMS: dict[str, list[str]] = {
    "fp32": ["train.amp=none", "train.channels_last=false"],
    "bf16": ["train.amp=bf16", "train.channels_last=true"],
}


def settings() -> dict[str, tuple[Path, list[str]]]:
    """Setting name → (recipe, overrides shared by both arms)."""
    found = {"demo": (DEMO, ["train.threads=1"])}
    for m in MEMBERS:
        found[f"family{m}"] = (LEARNING, [*BUDGET, *FROZEN, *member_overrides(m)])
    return found


def run(out: Path) -> None:
    for n_seeds in range(1, SEEDS + 1):
        for name, (recipe, shared) in settings().items():
            for arm, change in ARMS.items():
                where = out / name / arm
                cmd = [sys.executable, "-m", "sanet.cli", "compare", str(recipe)]
                cmd += ["--models", "sanet", "--seeds", str(n_seeds), "--out", str(where)]
                cmd += ["--set", *shared, *change]
                print(f"[{time.strftime('%H:%M:%S')}] {where} seeds {n_seeds}", flush=True)
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"sanet compare failed ({done.returncode}) for {where}")


def summarize(out: Path) -> dict[str, Any]:
    from sanet.stats import mean_std, paired_difference

    table: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for name in settings():
        arms = {}
        for arm in ARMS:
            path = out / name / arm / "compare.json"
            if path.is_file():
                runs = json.loads(path.read_text())["runs"]
                arms[arm] = {r["seed"]: r for r in runs}
        if len(arms) < 2:
            continue
        seeds = sorted(set(arms["fp32"]) & set(arms["bf16"]))
        fp32 = [arms["fp32"][s]["mIoU"] for s in seeds]
        bf16 = [arms["bf16"][s]["mIoU"] for s in seeds]
        pooled["fp32"] += fp32
        pooled["bf16"] += bf16
        table[name] = {
            "seeds": seeds,
            "fp32": fp32,
            "bf16": bf16,
            "fp32_seed_sd": mean_std(fp32)[1],
            "bf16_seed_sd": mean_std(bf16)[1],
            "bf16_minus_fp32": paired_difference(fp32, bf16),
            "seconds": {a: [arms[a][s]["seconds"] for s in seeds] for a in ARMS},
        }
    table["pooled"] = {"bf16_minus_fp32": paired_difference(pooled["fp32"], pooled["bf16"])}
    return table


def markdown(table: dict[str, Any]) -> str:
    def ci(d: dict[str, Any]) -> str:
        if d["ci95"] is None:
            return f"{d['mean']:+.4f} (n {d['n']})"
        lo, hi = d["ci95"]
        return f"{d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    lines = [
        "| setting | seeds | float32 mIoU | bf16 mIoU | bf16 − float32, 95 % CI | float32 seed sd"
        " | train s, float32 / bf16 (median) |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for name, row in table.items():
        if name == "pooled":
            continue
        f = ", ".join(f"{v:.4f}" for v in row["fp32"])
        b = ", ".join(f"{v:.4f}" for v in row["bf16"])
        sec = {a: sorted(v)[len(v) // 2] for a, v in row["seconds"].items()}
        lines.append(
            f"| {name} | {len(row['seeds'])} | {f} | {b} | {ci(row['bf16_minus_fp32'])} | "
            f"{row['fp32_seed_sd']:.4f} | {sec['fp32']:.0f} / {sec['bf16']:.0f} |"
        )
    lines.append(
        f"| all pairs | {table['pooled']['bf16_minus_fp32']['n']} | | | "
        f"{ci(table['pooled']['bf16_minus_fp32'])} | | |"
    )
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], to: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in table if n != "pooled"] + ["pooled"]
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, name in enumerate(names):
        d = table[name]["bf16_minus_fp32"]
        if name != "pooled":
            diffs = [b - f for f, b in zip(table[name]["fp32"], table[name]["bf16"], strict=True)]
            ax.plot([i] * len(diffs), diffs, "o", color="0.6", ms=4)
        if d["ci95"] is not None:
            lo, hi = d["ci95"]
            ax.errorbar(
                i, d["mean"], yerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="s", color="C0"
            )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("val mIoU, bf16 − float32")
    ax.set_title("bf16 training against float32, paired by seed (95 % CI)")
    fig.tight_layout()
    fig.savefig(to / "bf16_quality.png", dpi=120)


def report(out: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    table = summarize(out)
    (to / "bf16_quality.json").write_text(json.dumps(table, indent=1) + "\n")
    (to / "bf16_quality.md").write_text(markdown(table))
    plot(table, to)
    print(markdown(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=Path("runs/precision-quality"))
    parser.add_argument("--to", type=Path, default=Path("docs/precision"))
    args = parser.parse_args()
    run(args.out) if args.phase == "run" else report(args.out, args.to)


if __name__ == "__main__":
    main()
