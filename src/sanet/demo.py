"""``sanet demo``: the main job on the embedded default.

Trains a small SANet (resnet18d, no pretrained weights) on the synthetic scenes on CPU with
``sanet/configs/demo.yaml``, evaluates the best weights on the validation scenes and writes
``metrics.json``, the training curves and a prediction panel into the run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sanet.checkpoint import atomic_write_text, load_model
from sanet.config import load_config


def run_demo(out: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train (validating as it goes), report the best validation and draw; returns the summary also written to ``out/metrics.json``."""
    from sanet.cli_train import demo_config_path
    from sanet.trainer import Trainer

    start = time.perf_counter()
    cfg = load_config(demo_config_path(), overrides)
    if (out / "checkpoints").exists():  # the demo always starts fresh; keep nothing half-old
        shutil.rmtree(out / "checkpoints")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    trainer = Trainer(cfg, out)
    trainer.fit()
    # the best validation already evaluated exactly the weights in model/: no second pass
    result = trainer.best_result
    assert result is not None, "fit() always validates at least once"
    model, meta = load_model(out / "model")
    summary = {
        "model": f"{cfg.model.name}-{cfg.model.backbone}",
        "val_mIoU": result["mIoU"], "val_pixAcc": result["pixAcc"],
        "IoU": dict(zip(meta["class_names"], result["IoU"], strict=True)),
        "convention": result["convention"],
        "protocol": {"scales": [1.0], "flip": False, "dataset": "synthetic", "split": "val",
                     "images": len(trainer.val_set)},
        "seconds": round(time.perf_counter() - start, 1), "run_dir": str(out),
    }  # fmt: skip
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    prediction_panel(model, trainer.val_set, meta["palette"], out / "plots/predictions.png")
    return summary


@torch.no_grad()
def prediction_panel(model: Any, dataset: Any, palette: list, path: Path, rows: int = 4) -> Path:
    """Input / ground truth / prediction for the first ``rows`` images of ``dataset``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sanet.data.transforms import eval_transforms
    from sanet.visualize import colorize

    norm = eval_transforms()
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for r in range(rows):
        image, mask = dataset[r]
        x, _ = norm(image, mask)
        pred = model(x[None])["out"].argmax(1)[0]
        for ax, img, title in zip(
            axes[r], (image.permute(1, 2, 0).numpy(), colorize(mask, palette), colorize(pred, palette)),
            ("input", "ground truth", f"prediction ({model.name})"), strict=True,
        ):  # fmt: skip
            ax.imshow(img)
            ax.set_title(title if r == 0 else "")
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
