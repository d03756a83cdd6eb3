"""Table 3 as a tool: train several models × seeds under one recipe and compare them fairly.

Each (model, seed) trains with the same recipe, overrides and budget in its own run directory
``OUT/runs/<model>-seed<seed>/``; every run is validated by the trainer's own protocol (single
scale, the whole val split). A run's result is the validation of its *final* weights (no choice
of the best epoch on the val split); the best validation is kept alongside for reference.

Re-running the same comparison skips finished runs (``RunDir.compare_run`` holds the wall time
spent so far and, once the run has ended, its result) and resumes interrupted ones from
``checkpoints/last.pt``; a run directory trained with another config is refused.

Statistics (:func:`summarize`): per model the mean and sample standard deviation (``ddof=1``)
of mIoU over seeds and the per-class IoU averaged over seeds; per model after the first, the
*paired* differences to the first model on the seeds both share, with a 95 % confidence interval
``mean ± t(0.975, n−1) · sd / √n`` and the paired t-test p-value (scipy).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sanet._files import (
    atomic_write_text,
    ensure_writable_dir,
    is_temp_file,
    refuse_foreign_files,
)
from sanet.config import Config, load_config
from sanet.errors import ComparisonInterrupted, UsageError, arg, speaks_cli, suggest
from sanet.models.card import write_model_card
from sanet.models.registry import list_models
from sanet.models.segmentation import CONFIG_NAME, read_pretrained_config
from sanet.rundir import RunDir
from sanet.stats import mean_std, paired_difference
from sanet.training.runlog import TrainerCallbacks
from sanet.training.runtime import StopFlag
from sanet.training.trainer import Trainer, TrainingInterrupted
from sanet.viz.figures import plot_compare

logger = logging.getLogger(__name__)
_COMMAND = {True: "sanet compare", False: "sanet.compare"}  # in the caller's words


@dataclass
class RunResult:
    """One finished (model, seed) run: its final validation and its learning curve."""

    model: str
    seed: int
    run_dir: str
    mIoU: float  # validation of the final weights
    pixAcc: float
    IoU: list[float | None]
    best_mIoU: float  # the best validation during training (for reference)
    steps: int
    seconds: float  # wall time of training and validation, summed over resumed sessions
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val mIoU)


def run_name(model: str, seed: int) -> str:
    """The run directory name of one (model, seed) pair."""
    return f"{model}-seed{seed}"


def member_config(recipe: str | Path, model: str, seed: int, overrides: Sequence[str]) -> Config:
    """The recipe with ``overrides``, then ``model.name`` and ``train.seed`` set for this run."""
    return load_config(recipe, [*overrides, f"model.name={model}", f"train.seed={seed}"])


def read_result(run: RunDir, model: str, seed: int, seconds: float) -> RunResult:
    """A :class:`RunResult` from a finished run's ``metrics.jsonl``.

    The last validation record is the final weights' (the trainer always validates at the end).
    """
    records = [json.loads(line) for line in run.metrics_log.read_text().splitlines() if line]
    val = [r for r in records if r.get("kind") == "val"]
    if not val:
        raise UsageError(f"{run.metrics_log}: no validation record; the run did not finish.")
    final = val[-1]
    return RunResult(
        model=model,
        seed=seed,
        run_dir=str(run.root),
        mIoU=final["mIoU"],
        pixAcc=final["pixAcc"],
        IoU=final["IoU"],
        best_mIoU=max(r["mIoU"] for r in val),
        steps=final["step"],
        seconds=round(seconds, 1),
        curve=[(r["step"], r["mIoU"]) for r in val],
    )


def ensure_run(
    cfg: Config,
    run: RunDir,
    model: str,
    seed: int,
    callbacks: TrainerCallbacks | None = None,
    stop: StopFlag | None = None,
) -> RunResult:
    """Train one run unless it has finished; resume it if it was interrupted.

    With ``stop`` (the comparison's :class:`StopFlag`), a signal that came while the run was
    being built stops before its training starts (:class:`ComparisonInterrupted`).
    """
    state = json.loads(run.compare_run.read_text()) if run.compare_run.is_file() else {}
    if state.get("result") or run.has_checkpoint():
        _check_same_config(cfg, run)
    if state.get("result"):
        result = state["result"]
        return RunResult(**{**result, "curve": [tuple(p) for p in result["curve"]]})
    resume, spent = run.has_checkpoint(), float(state.get("seconds", 0.0))
    logger.info("compare: %s %s", "resuming" if resume else "training", run.root)
    start = time.perf_counter()
    try:
        trainer = Trainer(cfg, run.root, resume=resume, callbacks=callbacks)
        if stop is not None and stop.signal:
            raise ComparisonInterrupted(f"stopped by {stop.signal}", stop.signal)
        trainer.fit()
    finally:  # an interrupted session's time still counts towards the run's wall time
        spent += time.perf_counter() - start
        if run.root.is_dir():
            atomic_write_text(run.compare_run, json.dumps({"seconds": spent}) + "\n")
    result = read_result(run, model, seed, spent)
    payload = {"seconds": spent, "result": asdict(result)}
    atomic_write_text(run.compare_run, json.dumps(payload, indent=1) + "\n")
    return result


def _check_same_config(cfg: Config, run: RunDir) -> None:
    saved = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    changed = [
        f"{sec}.{key}"
        for sec, values in cfg.to_dict().items()
        for key, value in values.items()
        if saved.get(sec, {}).get(key) != value
    ]
    if changed:
        raise UsageError(
            f"{run.root} was trained with a different config ({', '.join(changed)}). Compare "
            f"into a new {arg('out')} folder, or delete that run directory to retrain it."
        )


def run_all(
    recipe: str | Path,
    models: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    callbacks: TrainerCallbacks | None = None,
) -> list[RunResult]:
    """Train (or reuse) every (model, seed) run of the comparison, seed-major order.

    Seed-major order means an interrupted comparison already holds complete pairs of models.
    """
    out = Path(out)
    configs = {(m, s): member_config(recipe, m, s, overrides) for s in seeds for m in models}
    results: list[RunResult] = []
    # SIGINT/SIGTERM anywhere (a run's training or validation, between runs) stops the whole
    # comparison: the trainer saves the run in progress, finished runs stay, a re-run resumes.
    with StopFlag("stopping the comparison (finished runs are kept)") as stop:
        for (model, seed), cfg in configs.items():  # every config is checked before training
            name = run_name(model, seed)
            if stop.signal:
                raise _interrupted(stop.signal, f"before run {name}", results, len(configs))
            try:
                results.append(
                    ensure_run(cfg, RunDir(out / "runs" / name), model, seed, callbacks, stop)
                )
            except TrainingInterrupted as err:
                where = f"during run {name} (its checkpoints/last.pt holds step {err.step})"
                raise _interrupted(err.signal, where, results, len(configs)) from None
            except ComparisonInterrupted as err:
                where = f"before run {name} started training"
                raise _interrupted(err.signal, where, results, len(configs)) from None
            if stop.signal:  # it came after the run's last step: the run finished and is kept
                raise _interrupted(stop.signal, f"after run {name} finished", results, len(configs))
    return results


def _interrupted(
    signal: str, where: str, finished: list[RunResult], total: int
) -> ComparisonInterrupted:
    kept = (
        f"{len(finished)} of {total} runs finished and are kept"
        if finished
        else f"none of the {total} runs had finished"
    )
    again = "Re-run the same command" if speaks_cli() else "Call sanet.compare again as before"
    return ComparisonInterrupted(f"stopped by {signal} {where}; {kept}. {again} to resume.", signal)


def summarize(
    results: Sequence[RunResult], models: Sequence[str], class_names: Sequence[str]
) -> dict[str, Any]:
    """The comparison's numbers: per model mean ± std, per-class IoU and paired differences."""
    by_model = {
        m: sorted((r for r in results if r.model == m), key=lambda r: r.seed) for m in models
    }
    summary: dict[str, Any] = {"per_model": {}, "paired": {}, "class_names": list(class_names)}
    for model, runs in by_model.items():
        miou, std = mean_std([r.mIoU for r in runs])
        summary["per_model"][model] = {
            "n": len(runs),
            "seeds": [r.seed for r in runs],
            "mIoU": [r.mIoU for r in runs],
            "mIoU_mean": miou,
            "mIoU_std": std,
            "pixAcc_mean": mean_std([r.pixAcc for r in runs])[0],
            "best_mIoU_mean": mean_std([r.best_mIoU for r in runs])[0],
            "IoU_mean": _per_class_mean([r.IoU for r in runs]),
            "seconds_mean": mean_std([r.seconds for r in runs])[0],
        }
    first = models[0]
    for model in models[1:]:
        ref = {r.seed: r.mIoU for r in by_model[first]}
        pairs = [(ref[r.seed], r.mIoU) for r in by_model[model] if r.seed in ref]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        summary["paired"][model] = {"vs": first, **paired_difference(a, b)} if pairs else None
    return summary


def _per_class_mean(ious: Sequence[Sequence[float | None]]) -> list[float | None]:
    columns = zip(*ious, strict=True)
    means = []
    for column in columns:
        present = [v for v in column if v is not None]
        means.append(sum(present) / len(present) if present else None)
    return means


def compare(
    recipe: str | Path,
    models: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    callbacks: TrainerCallbacks | None = None,
) -> dict[str, Any]:
    """Train every run (resumably), then write ``OUT/compare.json`` and ``OUT/compare.png``.

    Returns:
        The payload of ``compare.json``: ``recipe``, ``overrides``, ``models``, ``seeds``,
        ``runs`` (one :class:`RunResult` each) and the :func:`summarize` numbers.
    """
    if not models or len(set(models)) != len(models):
        raise UsageError(
            f"{arg('models')} must name one or more distinct models, got {list(models)}."
        )
    for model in models:
        if model not in list_models():
            raise UsageError(
                f"Unknown model {model!r}; choose from {list_models()}.{suggest(model, list_models())}"
            )
    if not seeds:
        raise UsageError(f"{arg('seeds')}: a comparison needs at least one seed.")
    out = Path(out)
    ensure_writable_dir(out, arg("out"))
    writes, command = "runs/, compare.json and compare.png", _COMMAND[speaks_cli()]
    refuse_foreign_files(out, foreign_files(out), arg("out"), command, writes)
    results = run_all(recipe, models, seeds, out, overrides, callbacks)
    names = _class_names(RunDir(results[0].run_dir))
    payload = {
        "recipe": str(recipe),
        "overrides": list(overrides),
        "models": list(models),
        "seeds": list(seeds),
        "metric": "val mIoU of the final weights (single scale)",
        **summarize(results, models, names),
        "runs": [asdict(r) for r in results],
    }
    atomic_write_text(out / "compare.json", json.dumps(payload, indent=1) + "\n")
    record_in_cards(payload)
    plot_compare(payload, out / "compare.png")
    logger.info("compare: wrote %s and %s", out / "compare.json", out / "compare.png")
    return payload


_PAYLOAD_KEYS = {"recipe", "models", "seeds", "per_model", "runs"}
_RUN_NAME = re.compile(r".+-seed-?\d+")


def foreign_files(out: Path) -> list[Path]:
    """What ``out`` holds that ``sanet compare`` did not write: anything but ``runs/<model>-
    seed<N>/`` folders, a ``compare.json`` of a comparison, the ``compare.png`` beside it and
    the temporary files of interrupted writes."""
    if not out.is_dir():
        return []
    ours = {out / "runs"}
    try:
        payload = json.loads((out / "compare.json").read_text())
    except (OSError, ValueError):
        payload = None
    if isinstance(payload, dict) and payload.keys() >= _PAYLOAD_KEYS:
        ours |= {out / "compare.json", out / "compare.png"}
    found = [p for p in out.iterdir() if p not in ours and not is_temp_file(p)]
    runs = out / "runs"
    if runs.is_dir():
        found += [p for p in runs.iterdir() if not (p.is_dir() and _RUN_NAME.fullmatch(p.name))]
    elif runs.exists():
        found.append(runs)
    return sorted(found)


def record_in_cards(payload: dict[str, Any]) -> None:
    """Each run's ``model/`` gains its model's seeds and spread (``metadata["compare"]`` in
    ``config.json``) and its model card is written again."""
    for run in payload["runs"]:
        folder = RunDir(run["run_dir"]).model
        if not (folder / CONFIG_NAME).is_file():
            continue
        per = payload["per_model"][run["model"]]
        config = read_pretrained_config(folder)
        config.setdefault("metadata", {})["compare"] = {
            "metric": payload["metric"],
            "models": payload["models"],
            "seed": run["seed"],
            **{k: per[k] for k in ("seeds", "mIoU", "mIoU_mean", "mIoU_std")},
            "paired": payload["paired"].get(run["model"]),
        }
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        write_model_card(folder, config)


def _class_names(run: RunDir) -> list[str]:
    return list(read_pretrained_config(run.model)["metadata"]["class_names"])
