"""Does labelling in ``sanet suggest``'s order save labels? A simulated active-learning loop on
members of the scene family (issue 33; docs/active-learning.md).

For each family member and seed: a pool of generated scenes (their masks hidden from the
strategies), a labelled seed set drawn at random from it, and a fixed validation set. Round 0
trains on the seed set (shared by every strategy). Each later round, every strategy labels
``--per-round`` more pool images with the model of its previous round, and a model is trained
from scratch on its labelled images with the same budget (``--steps`` optimiser steps, whatever
the number of images); its validation mIoU is recorded against the number of labelled images.

Strategies: ``random`` (a seeded draw), ``rank`` (``sanet.rank``'s order: mean entropy and
mirror disagreement), ``suggest`` (``sanet.suggest``: uncertainty-weighted k-center greedy).

Resumable: every finished round is one line of ``OUT/results.jsonl`` (with the labelled images
it leads to); a rerun skips them and retrains an interrupted round from scratch.

The grid of docs/active-learning.md (96 trainings, about 70 minutes on one shared CPU core):

    python benchmarks/active_learning.py run --out runs/active2 --members 9 6 1 --seeds 0 1 \\
        --rounds 5 --steps 100 --seed-size 8 --per-round 8 --pool 96 --val 48 --size 48
    python benchmarks/active_learning.py report --out runs/active2 --to docs/active-learning/grid
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "learning_recipe.yaml"  # the learning study's frozen demo recipe
STRATEGIES = ("random", "rank", "suggest")


def budget(args: argparse.Namespace) -> list[str]:
    """The same training budget every round: ``steps`` steps of batch 8 on ``size``² scenes."""
    s = args.size
    return [
        f"model.backbone={args.backbone}",
        "data.dataset=folder",
        "data.options={}",
        f"data.base_size={s}",
        f"data.crop_size={s}",
        f"eval.crop_size={s}",
        f"eval.stride={s}",
        "train.batch_size=8",
        "train.epochs=100000",  # the run ends at max_steps
        f"train.max_steps={args.steps}",
        "train.val_every=0",
        "train.log_every=10",
        "train.threads=1",
        "train.device=cpu",
    ]


def write_member(root: Path, member: int, pool: int, val: int, size: int) -> Path:
    """The member's pool and validation scenes as a ``folder`` dataset (written once)."""
    from PIL import Image

    from sanet.data.synthetic import SyntheticDataset

    done = root / "done"
    if done.exists():
        return root
    for split, n in (("pool", pool), ("val", val)):
        data = SyntheticDataset(split, num_images=n, size=size, generator="family", family=member)
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = data.load_raw(i)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
        names = data.class_names
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    done.write_text("")
    return root


def round_data(data: Path, where: Path, labelled: list[str]) -> Path:
    """A ``folder`` dataset whose train split links the labelled pool images; val is shared."""
    if where.exists():
        shutil.rmtree(where)
    for sub in ("images", "masks"):
        (where / sub / "train").mkdir(parents=True)
        (where / sub / "val").symlink_to((data / sub / "val").resolve())
        for stem in labelled:
            (where / sub / "train" / f"{stem}.png").symlink_to(
                (data / sub / "pool" / f"{stem}.png").resolve()
            )
    shutil.copy(data / "classes.txt", where / "classes.txt")
    return where


def train_round(data: Path, where: Path, labelled: list[str], args: argparse.Namespace) -> float:
    """Train from scratch on ``labelled``; the final validation mIoU."""
    import sanet.api

    root = round_data(data, where / "data", labelled)
    if (where / "run").exists():
        shutil.rmtree(where / "run")  # an interrupted round starts again
    seed = f"train.seed={args.current_seed}"
    result = sanet.api.train(
        RECIPE, out=where / "run", overrides=[*budget(args), f"data.root={root}", seed]
    )
    # the next round predicts with RUN/model; the training state (2 × 110 MB a round at
    # resnet18d) and the event files are not needed again
    shutil.rmtree(where / "run" / "checkpoints", ignore_errors=True)
    shutil.rmtree(where / "run" / "tensorboard", ignore_errors=True)
    return float(result.history[-1]["mIoU"])


def choose(strategy: str, run: Path, data: Path, labelled: list[str], n: int, rng, tmp: Path):
    """The next ``n`` pool stems ``strategy`` labels, with the model of ``run``."""
    import sanet.api
    from sanet.api.suggest import suggest

    left = sorted(
        p.stem for p in (data / "images" / "pool").glob("*.png") if p.stem not in labelled
    )
    files = [data / "images" / "pool" / f"{s}.png" for s in left]
    if strategy == "random":
        return sorted(rng.choice(left, size=min(n, len(left)), replace=False).tolist())
    out = tmp / f"{strategy}.csv"
    if strategy == "rank":
        rows = sanet.api.rank(run, files, out=out, overwrite=True).rows
        return [Path(r["image"]).stem for r in rows[:n]]
    result = suggest(run, files, n, out=out, exclude=labelled, overwrite=True)
    return [Path(r["image"]).stem for r in result.rows]


def done_records(path: Path) -> dict[tuple, dict[str, Any]]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["member"], r["seed"], r["strategy"], r["round"]): r for r in records}


def append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    # seed-major: every generator's first seed finishes before any second seed starts, so that
    # an interrupted grid still holds whole (generator, seed) runs on every generator
    for seed in args.seeds:
        for member in args.members:
            data = write_member(out / "data" / f"m{member}", member, args.pool, args.val, args.size)
            args.current_seed = seed
            run_seed(data, out, log, member, seed, args)


def run_seed(data: Path, out: Path, log: Path, member: int, seed: int, args) -> None:
    """Round 0 once on the seed set, then every strategy's rounds, strategy by strategy."""
    stems = sorted(p.stem for p in (data / "images" / "pool").glob("*.png"))
    rng = np.random.default_rng([seed, member, 33])
    first = sorted(rng.choice(stems, size=args.seed_size, replace=False).tolist())
    base = out / "runs" / f"m{member}" / f"s{seed}"
    key = (member, seed, "seed", 0)
    if key not in done_records(log):
        t = time.time()
        miou = train_round(data, base / "r0", first, args)
        record = {"member": member, "seed": seed, "strategy": "seed", "round": 0}
        record |= {"labelled": len(first), "mIoU": miou, "images": first}
        record |= {"seconds": round(time.time() - t, 1)}
        append(log, record)
        print(f"[{time.strftime('%H:%M:%S')}] m{member} s{seed} r0: mIoU {miou:.4f}", flush=True)
    for strategy in args.strategies:
        labelled, model = first, base / "r0" / "run"
        for rnd in range(1, args.rounds + 1):
            key = (member, seed, strategy, rnd)
            done = done_records(log)
            where = base / strategy / f"r{rnd}"
            if key in done:
                labelled, model = done[key]["images"], where / "run"
                continue
            t = time.time()
            pick_rng = np.random.default_rng([seed, member, rnd, 33])
            where.mkdir(parents=True, exist_ok=True)
            new = choose(strategy, model, data, labelled, args.per_round, pick_rng, where)
            labelled = sorted(set(labelled) | set(new))
            miou = train_round(data, where, labelled, args)
            record = {"member": member, "seed": seed, "strategy": strategy, "round": rnd}
            record |= {"labelled": len(labelled), "mIoU": miou, "picked": new, "images": labelled}
            record |= {"seconds": round(time.time() - t, 1)}
            append(log, record)
            model = where / "run"
            stamp = time.strftime("%H:%M:%S")
            print(f"[{stamp}] m{member} s{seed} {strategy} r{rnd}: {miou:.4f}", flush=True)


def report(args: argparse.Namespace) -> None:
    """Print the tables (active_learning_report.py); with ``--to DIR`` also write them
    (``tables.md``), every number (``summary.json``), the curves (``curves.png``) and the
    records they come from (``results.jsonl``)."""
    from active_learning_report import markdown, summarize, write_curves

    records = {}
    for folder in [args.out, *args.also]:
        records |= done_records(folder / "results.jsonl")
    summary = summarize(records)
    text = markdown(summary)
    print(text)
    if args.to is not None:
        args.to.mkdir(parents=True, exist_ok=True)
        (args.to / "tables.md").write_text(text)
        (args.to / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        lines = [json.dumps(r) for _, r in sorted(records.items(), key=lambda kv: str(kv[0]))]
        (args.to / "results.jsonl").write_text("\n".join(lines) + "\n")
        write_curves(summary, args.to / "curves.png")
        print(f"wrote tables.md, summary.json, results.jsonl and curves.png in {args.to}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=Path("runs/active"))
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="report: more --out")
    parser.add_argument("--to", type=Path, help="report: write the tables, numbers and curves")
    parser.add_argument("--members", type=int, nargs="+", default=[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the seed round")
    parser.add_argument("--seed-size", type=int, default=16, help="labelled images at round 0")
    parser.add_argument("--per-round", type=int, default=16, help="images labelled per round")
    parser.add_argument("--pool", type=int, default=160, help="pool images (masks hidden)")
    parser.add_argument("--val", type=int, default=64, help="validation images")
    parser.add_argument("--size", type=int, default=48, help="scene side in pixels")
    parser.add_argument("--steps", type=int, default=80, help="optimiser steps per round")
    parser.add_argument("--backbone", default="resnet18d")
    args = parser.parse_args()
    (run if args.phase == "run" else report)(args)


if __name__ == "__main__":
    main()
