"""How many planted label errors ``sanet audit-labels`` finds, on scene generators nobody tuned
the audit on (docs/trust.md, "Measured: planted label errors").

Data: for each generator of DATASETS, a ``folder`` dataset whose train split (384 scenes, 64²)
and val split (300 scenes) carry label errors in 10 % of their masks, the five kinds of
``sanet.data.planted`` in turn, and DRAWS further val splits (other scenes, other errors).
Models: the from-scratch demo recipe (src/sanet/configs/demo_scratch.yaml: SANet, resnet18d, 384 steps
at batch 16) at 64², trained on each train split (seeds MODEL_SEEDS), 1 thread; each calibrated
(``sanet.calibrate``) on its val split. Each model then audits its val split and the DRAWS
(``sanet.audit_labels --checkpoint``, a split it did not train on), and from the same audit three
scores are ranked (``sanet.trust.audit``):

- ``naive``: an image's share of labelled pixels whose prediction differs from the label
  (``disagreement``);
- ``image evidence``: the evidence of all an image's regions over its labelled pixels (the audit
  before issue 30, ``image_evidence``);
- ``regions``: regions scored one by one, an image ranked by its most suspicious region
  (``region_score``: the audit's score before shifted outlines were looked for);
- ``regions + shifts``: the audit's ``score``: the larger of ``region_score`` and
  ``shift_score``, the evidence of the labelled object whose outline a small shift would move
  onto the model's confident prediction (``sanet.trust.audit_shifts``).

Recall: the share of the N planted images among the 2N a score ranks first, overall and per
kind. Phases are resumable (finished runs are reused, audits are appended to scores.jsonl):

    python benchmarks/audit_planted.py prepare --work /tmp/audit-bench [--generators scenes family1]
    python benchmarks/audit_planted.py train --work /tmp/audit-bench [--worker 0/2]
    python benchmarks/audit_planted.py score --work /tmp/audit-bench
    python benchmarks/audit_planted.py oof --work /tmp/audit-bench --only family1:0   # 5 fold models
    python benchmarks/audit_planted.py report --work /tmp/audit-bench
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from sanet.data.planted import write_planted_folder

#: generator name → options of ``write_planted_folder``; the scenes' seed is 1 for each, as in
#: the glyph check of docs/paper-fidelity.md; family members 1 and 11 (6 and 7 classes)
DATASETS: dict[str, dict[str, Any]] = {
    "scenes": {"generator": "scenes"},  # the demo's scenes: where the audit was designed
    "glyphs": {"generator": "glyphs"},
    "family1": {"generator": "family", "family": 1},
    "family11": {"generator": "family", "family": 11},
}
SIZE, TRAIN_IMAGES, VAL_IMAGES, SHARE, SCENE_SEED = 64, 384, 300, 0.1, 1
MODEL_SEEDS = (0, 1)
DRAWS = (2, 3)  # scene seeds of further val splits (their own planted errors)
#: the demo recipe (384 steps of batch 16) at 64², on one thread, validated once at the end
RECIPE = "demo_scratch"
BUDGET = [
    "data.options={}",
    f"data.base_size={SIZE}",
    f"data.crop_size={SIZE}",
    f"eval.crop_size={SIZE}",
    f"eval.stride={SIZE}",
    "train.threads=1",
    "train.val_every=0",
]


def prepare(work: Path, generators: list[str]) -> None:
    for name, options in DATASETS.items():
        if generators and name not in generators:
            continue
        root = work / "data" / name
        if (root / "planted_val.json").is_file():
            continue
        for split, n in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
            key = write_planted_folder(
                root, num_images=n, share=SHARE, size=SIZE, seed=SCENE_SEED, split=split, **options
            )
            print(f"{root} {split}: {len(key['images'])} planted of {n}", flush=True)
        for seed in DRAWS:
            extra = work / "data" / f"{name}-draw{seed}"
            write_planted_folder(
                extra,
                num_images=VAL_IMAGES,
                share=SHARE,
                size=SIZE,
                seed=seed,
                split="val",
                **options,
            )


#: a longer budget (``--long``): twice the demo's epochs, to see how recall follows the model
LONG = ["train.epochs=32"]


def run_dir(work: Path, name: str, seed: int, long: bool = False) -> Path:
    return work / "runs" / name / f"seed{seed}{'-x2' if long else ''}"


def train(work: Path, worker: int, workers: int, only: list[str], long: bool = False) -> None:
    from sanet.config import load_config, resolve_recipe
    from sanet.experiments.compare import ensure_run
    from sanet.rundir import RunDir

    jobs = [(name, seed) for seed in MODEL_SEEDS for name in DATASETS]
    jobs = jobs[worker::workers]
    if only:
        jobs = [(name, int(seed)) for name, seed in (job.split(":") for job in only)]
    for name, seed in jobs:
        data = ["data.dataset=folder", f"data.root={work / 'data' / name}"]
        budget = [*BUDGET, *(LONG if long else [])]
        cfg = load_config(resolve_recipe(RECIPE), [*data, *budget, f"train.seed={seed}"])
        start = time.perf_counter()
        result = ensure_run(cfg, RunDir(run_dir(work, name, seed, long)), "sanet", seed)
        print(
            f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}{' x2' if long else ''}: val mIoU {result.mIoU:.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


SCORES = {
    "naive": "disagreement",
    "image evidence": "image_evidence",
    "regions": "region_score",
    "regions + shifts": "score",
}


def recall(entries: list[dict[str, Any]], key: dict[str, Any], field: str) -> dict[str, Any]:
    """Share of the N planted images among the 2N an audit's ``field`` ranks first, overall and
    per kind (ties: dataset order); with the counts."""
    order = sorted(entries, key=lambda e: (-e[field], e["index"]))
    planted = {e["index"]: e["kind"] for e in key["images"]}
    top = {e["index"] for e in order[: 2 * len(planted)]}
    found: dict[str, Any] = {"all": [sum(i in top for i in planted), len(planted)]}
    for kind in key["kinds"]:
        mine = [i for i, k in planted.items() if k == kind]
        found[kind] = [sum(i in top for i in mine), len(mine)]
    return found


def score(work: Path) -> None:
    """Calibrate each finished model on its val split, then audit its val splits (own scenes
    and DRAWS) with ``sanet.audit_labels``; one line of ``scores.jsonl`` per (model, split). A
    model the agreement check refuses is recorded as refused and audited with ``min_miou=0``
    (what its audit would have been)."""
    import sanet

    done, seen = _scores(work)
    for name, seed, long in itertools.product(DATASETS, MODEL_SEEDS, (False, True)):
        run = run_dir(work, name, seed, long)
        if not (run / "model" / "config.json").is_file():
            continue
        if not (run / "calibration" / "calibration.json").is_file():
            sanet.calibrate(run, f"folder:{work / 'data' / name}", out=run / "calibration")
        model = f"{name}:{seed}{' x2' if long else ''}"
        for data in [name, *(f"{name}-draw{d}" for d in DRAWS)]:
            if (model, data, "val") not in seen:
                _audit(work, run, model, data, done)


def out_of_fold(work: Path, only: list[str]) -> None:
    """Audit each chosen model's own train split (``--only NAME:SEED``, default every trained
    model): ``sanet.audit_labels`` then trains AUTO_FOLDS fold models with the run's config and
    scores every image with the one that did not see it (docs/trust.md); appended to
    scores.jsonl with ``"split": "train"``."""
    done, seen = _scores(work)
    chosen = [j.split(":") for j in only] or [(n, s) for s in MODEL_SEEDS for n in DATASETS]
    for name, seed in chosen:
        run = run_dir(work, name, int(seed))
        model = f"{name}:{seed}"
        if (run / "model" / "config.json").is_file() and (model, name, "train") not in seen:
            _audit(work, run, model, name, done, split="train")


def _scores(work: Path) -> tuple[Path, set[tuple[str, str, str]]]:
    """scores.jsonl and the (model, data, split) audits it already holds (rows from before the
    oof phase have no split: val); one thread for the audits that follow."""
    import torch

    torch.set_num_threads(1)
    done = work / "scores.jsonl"
    rows = map(json.loads, _lines(done))
    return done, {(r["model"], r["data"], r.get("split", "val")) for r in rows}


def _audit(work: Path, run: Path, model: str, data: str, done: Path, split: str = "val") -> None:
    import sanet
    from sanet.errors import UsageError

    root = work / "data" / data
    start = time.perf_counter()
    tag = "" if split == "val" else f"-{split}"
    where = dict(checkpoint=run, split=split, out=work / "audits" / f"{model}-{data}{tag}")
    row: dict[str, Any] = {"model": model, "data": data, "split": split, "refused": None}
    try:
        found = sanet.audit_labels(f"folder:{root}", **where, top=0, overwrite=True)
    except UsageError as err:  # the agreement check: what the audit would have been
        row["refused"] = str(err)
        found = sanet.audit_labels(f"folder:{root}", **where, top=0, overwrite=True, min_miou=0)
    key = json.loads((root / f"planted_{split}.json").read_text())
    # out of fold: raw probabilities, one agreement per fold model (their mean kept here)
    runs = found.audit.get("runs") or [found.audit]
    row |= {"temperature": found.audit.get("temperature")}
    row |= {"agreement": sum(r["agreement"]["mIoU"] for r in runs) / len(runs)}
    row |= {m: recall(found.images, key, f) for m, f in SCORES.items()}
    row["seconds"] = round(time.perf_counter() - start, 1)
    with done.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def report(work: Path) -> None:
    """Recall of each score, pooled over models and draws: unseen generators (all but
    ``scenes``) and the design scenes apart; per kind."""
    rows = [json.loads(line) for line in _lines(work / "scores.jsonl")]
    kinds = [
        "all",
        *json.loads((work / "data" / "scenes" / "planted_val.json").read_text())["kinds"],
    ]
    val = [r for r in rows if r.get("split", "val") == "val"]
    for title, keep, group in (
        ("unseen", lambda r: not r["model"].startswith("scenes") and "x2" not in r["model"], val),
        ("unseen, twice the epochs", lambda r: "x2" in r["model"], val),
        ("scenes (design)", lambda r: r["model"].startswith("scenes"), val),
        ("own train split, out of fold", lambda r: r.get("split") == "train", rows),
    ):
        mine = [r for r in group if keep(r) and not r.get("refused")]
        if not mine:
            continue
        models = sorted({r["model"] for r in mine})
        print(f"## {title}: {len(mine)} audits, models {', '.join(models)}")
        print("| score | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for m in SCORES:
            cells = []
            for k in kinds:
                hit, n = (sum(r[m][k][j] for r in mine) for j in (0, 1))
                cells.append(f"{hit / max(n, 1):.2f} ({hit}/{n})")
            print(f"| {m} | " + " | ".join(cells) + " |")
        for r in [r for r in group if keep(r) and r.get("refused")]:
            print(
                f"- refused: {r['model']} on {r['data']}: agreement mIoU {r['agreement']:.3f}; "
                "audited anyway: " + ", ".join(f"{m} {r[m]['all']}" for m in SCORES)
            )
        for r in mine:
            t = r["temperature"]  # None out of fold: the fold models' raw probabilities
            print(
                f"- {r['model']} on {r['data']}: "
                + ("raw, " if t is None else f"T {t:.2f}, ")
                + f"agreement mIoU {r['agreement']:.3f}, regions {r['regions']['all']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["prepare", "train", "score", "oof", "report"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/audit-bench"))
    parser.add_argument("--worker", default="0/1", metavar="I/N")
    parser.add_argument("--only", nargs="*", default=[], metavar="NAME:SEED", help="these runs")
    parser.add_argument("--long", action="store_true", help="train: twice the demo's epochs")
    parser.add_argument(
        "--generators", nargs="*", default=[], choices=list(DATASETS), help="prepare: only these"
    )
    args = parser.parse_args()
    worker, workers = (int(x) for x in args.worker.split("/"))
    if args.phase == "prepare":
        prepare(args.work, args.generators)
    elif args.phase == "train":
        train(args.work, worker, workers, args.only, args.long)
    elif args.phase == "score":
        score(args.work)
    elif args.phase == "oof":
        out_of_fold(args.work, args.only)
    else:
        report(args.work)


if __name__ == "__main__":
    main()
