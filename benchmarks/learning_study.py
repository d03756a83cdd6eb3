"""When does SA help? SANet against FCN (and SE) across members of the scene family (issue 22).

Every comparison is one ``sanet compare`` per family member (``sanet.data.family``), so every
phase is resumable: re-running a command skips finished runs and resumes an interrupted one.
Phases (docs/learning.md gives the commands, the results and how they were chosen):

- ``screen``: recipe variants (LR, batch, schedule, head width, SANet's auxiliary losses) ×
  {sanet, fcn}, seed 0, on the *screening* members only (SCREEN_MEMBERS); nothing of the final
  table is seen here;
- ``final``: the frozen recipe (BUDGET + RECIPE) on FINAL_MEMBERS × SEEDS × {sanet, fcn,
  sanet_se}; all members at seed 0 first, then seed 1, so a stopped study holds whole seeds;
- ``check``: the recipe before the study (BUDGET alone) on FINAL_MEMBERS, seed 0, {sanet, fcn}:
  the whole-family test of the recipe change (paired with ``final``'s seed 0);
- ``report``: reads every ``compare.json``, writes ``study.json`` and the plots.

    python benchmarks/learning_study.py screen --out runs/learning
    python benchmarks/learning_study.py final --out runs/learning [--worker 0/2]  # and 1/2
    python benchmarks/learning_study.py check --out runs/learning
    python benchmarks/learning_study.py report --out runs/learning --to docs/learning
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
#: the demo recipe as it was before this study (a copy: the study must not move when demo.yaml does)
RECIPE = HERE / "learning_recipe.yaml"
SCREEN_MEMBERS = (100, 101, 102)
FINAL_MEMBERS = tuple(range(12))
SEEDS = (0, 1)
MODELS = ("sanet", "fcn", "sanet_se")
SIZE = 48
IMAGES = 320  # per split (train and val draw different images)
#: the study's budget, fixed from the machine's speed before any result was seen: 48² scenes,
#: 4 epochs of 320 at batch 8 = 160 steps, validated once at the end; 1 thread (the 2 cores
#: were shared with other jobs, where 2 threads ran 6× slower than 1)
BUDGET = [
    f"data.base_size={SIZE}",
    f"data.crop_size={SIZE}",
    f"eval.crop_size={SIZE}",
    f"eval.stride={SIZE}",
    "train.batch_size=8",
    "train.epochs=4",
    "train.val_every=0",
    "train.log_every=10",
    "train.threads=1",
]
#: one change each to BUDGET + the demo recipe, screened on SCREEN_MEMBERS
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr x2": ["train.lr=0.1"],
    "lr x0.5": ["train.lr=0.025"],
    "batch 16 (same images)": ["train.batch_size=16", "train.epochs=8"],
    "poly power 2": ["train.poly_power=2.0"],
    "head width 128": ["model.fuse_channels=128"],
    "L_mask only": ["loss.alpha=0.0", "loss.beta=0.0"],  # SANet's auxiliary terms off
    "2x steps (320)": ["train.epochs=8"],  # how far from the end of learning the budget stops
}
#: variants that change nothing for the FCN (it has no auxiliary loss), run for SANet only
SANET_ONLY = {"L_mask only"}
#: the frozen recipe of the final table: the screened changes that helped (docs/learning.md):
#: twice the steps raised both models on the screening member it was tried on (sanet 0.141 →
#: 0.240, fcn 0.204 → 0.252 on m100); no recipe change (LR, batch, schedule, head width, SANet's
#: auxiliary losses) helped both models on all three screening members
FROZEN: list[str] = ["train.epochs=8"]


def member_overrides(member: int) -> list[str]:
    """The data of one family member at the study's size."""
    opts = f"{{generator: family, family: {member}, num_images: {IMAGES}, size: {SIZE}, seed: 0}}"
    return [f"data.options={opts}"]


def run_compare(out: Path, models: tuple[str, ...], seeds: int, overrides: list[str]) -> None:
    """One ``sanet compare`` (resumes; a finished one only re-writes its compare.json)."""
    cmd = [sys.executable, "-m", "sanet.cli", "compare", str(RECIPE), "--models", *models]
    cmd += ["--seeds", str(seeds), "--out", str(out), "--set", *overrides]
    print(f"[{time.strftime('%H:%M:%S')}] {out}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise SystemExit(f"sanet compare failed ({done.returncode}) for {out}")


def screen(out: Path) -> None:
    for name, change in VARIANTS.items():
        for member in SCREEN_MEMBERS:
            where = out / "screen" / slug(name) / f"m{member}"
            models = ("sanet",) if name in SANET_ONLY else ("sanet", "fcn")
            run_compare(where, models, 1, [*BUDGET, *change, *member_overrides(member)])


def final(out: Path, worker: int = 0, workers: int = 1) -> None:
    for n_seeds in range(1, len(SEEDS) + 1):  # seed 0 everywhere, then seed 1
        for member in FINAL_MEMBERS[worker::workers]:
            overrides = [*BUDGET, *FROZEN, *member_overrides(member)]
            run_compare(out / "final" / f"m{member}", MODELS, n_seeds, overrides)


def check(out: Path, worker: int = 0, workers: int = 1) -> None:
    for member in FINAL_MEMBERS[worker::workers]:
        overrides = [*BUDGET, *member_overrides(member)]
        run_compare(out / "check" / f"m{member}", ("sanet", "fcn"), 1, overrides)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def read_compares(folder: Path) -> dict[int, dict[str, Any]]:
    """``{member: compare.json}`` of every finished comparison under ``folder/m<N>/``."""
    found = {}
    for path in sorted(folder.glob("m*/compare.json")):
        found[int(path.parent.name[1:])] = json.loads(path.read_text())
    return found


def report(out: Path, to: Path) -> None:
    sys.path.insert(0, str(HERE))
    from learning_stats import markdown_tables, summarize_final, summarize_screen, write_plots

    from sanet.data.family import draw_member

    to.mkdir(parents=True, exist_ok=True)
    members = {m: draw_member(m).parameters() for m in (*SCREEN_MEMBERS, *FINAL_MEMBERS)}
    screen_runs = {
        name: read_compares(out / "screen" / slug(name))
        for name in VARIANTS
        if (out / "screen" / slug(name)).is_dir()
    }
    study = {
        "budget": BUDGET,
        "frozen": FROZEN,
        "recipe": str(RECIPE.relative_to(HERE.parent)),
        "screen_members": list(SCREEN_MEMBERS),
        "final_members": list(FINAL_MEMBERS),
        "members": members,
        "screen": summarize_screen(screen_runs, VARIANTS),
        "final": summarize_final(read_compares(out / "final"), members),
        "check": summarize_final(read_compares(out / "check"), members),
    }
    (to / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    write_plots(study, to)
    (to / "tables.md").write_text(markdown_tables(study))
    print(f"wrote {to / 'study.json'}, tables.md and the plots in {to}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["screen", "final", "check", "report"])
    parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    parser.add_argument("--to", type=Path, default=Path("docs/learning"))
    parser.add_argument(
        "--worker",
        default="0/1",
        metavar="I/N",
        help="final and check: run every N-th member from the I-th (one process per core)",
    )
    args = parser.parse_args()
    worker, workers = (int(x) for x in args.worker.split("/"))
    if args.phase == "report":
        report(args.out, args.to)
    elif args.phase == "screen":
        screen(args.out)
    else:
        {"final": final, "check": check}[args.phase](args.out, worker, workers)


if __name__ == "__main__":
    main()
