"""Where a calibration is kept: the ``save_pretrained`` folder it belongs to, and the compact
record written into that folder's ``config.json`` (docs/trust.md, "Store").

``sanet.calibrate`` writes the whole record to ``calibration.json``; the model keeps only
:data:`~sanet.inference.confidence.STORED_KEYS` under ``metadata["calibration"]`` (the bulky
tables stay in the report).
What a :class:`~sanet.inference.Predictor` reads back is
:func:`sanet.inference.confidence.read_calibration`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sanet._files import atomic_write_text, temp_name
from sanet.errors import NotFoundError, UsageError, arg, speaks_cli
from sanet.inference.confidence import CALIBRATION_KEY, STORED_KEYS
from sanet.models.card import write_model_card
from sanet.models.segmentation import CONFIG_NAME, read_pretrained_config
from sanet.rundir import RunDir


def pretrained_folder(checkpoint: str | Path) -> Path:
    """The ``save_pretrained`` folder a calibration of ``checkpoint`` is stored in: the folder
    itself, or a run directory's ``model/``.

    Raises:
        UsageError: ``checkpoint`` is a ``.pt`` or ``.onnx`` file, or holds no saved model.
        NotFoundError: ``checkpoint`` does not exist.
    """
    path = Path(checkpoint)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return path
    if path.is_dir() and (RunDir(path).model / CONFIG_NAME).is_file():
        return RunDir(path).model
    export = "`sanet export`" if speaks_cli() else "sanet.export"
    if path.suffix.lower() in (".pt", ".onnx") and path.is_file():
        raise UsageError(
            f"{arg('checkpoint')} {str(path)!r} is a {path.suffix} file: a calibration is stored "
            "with a save_pretrained folder. Pass the run directory or its model/ folder (export "
            f"the calibrated model with {export} afterwards)."
        )
    if not path.exists():
        raise NotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    raise UsageError(
        f"{str(path)!r} holds no save_pretrained model (config.json + model.safetensors): pass "
        f"as {arg('checkpoint')} a run directory with a model/ folder or a save_pretrained folder."
    )


def stored_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a calibration record the model keeps (:data:`STORED_KEYS`)."""
    stored = {key: record[key] for key in STORED_KEYS if key in record}
    view = (stored.get("risk") or {}).get("per_image")
    if view and "values" in view:
        short = {k: v for k, v in view.items() if k != "values"}
        stored["risk"] = {**stored["risk"], "per_image": short}
    return stored


def stored_calibration(folder: str | Path) -> dict[str, Any] | None:
    """The calibration record ``folder/config.json`` carries, or ``None``."""
    return read_pretrained_config(folder).get("metadata", {}).get(CALIBRATION_KEY) or None


def describe(record: Mapping[str, Any]) -> str:
    """A stored calibration in a few words: temperature, risk threshold, data."""
    words = [f"T = {record.get('temperature', float('nan')):.4g}"]
    risk = record.get("risk") or {}
    if risk.get("threshold") is not None:
        mode = {"per_image": f", per image δ = {risk.get('delta')}"}.get(risk.get("mode"), "")
        classes = ", per class" if risk.get("class_thresholds") else ""
        words.append(
            f"risk α = {risk.get('alpha')}{mode}{classes}: unsure below confidence "
            f"{risk['threshold']:.4g}"
        )
    else:
        words.append("no risk threshold")
    if record.get("data"):
        words.append(
            f"fitted on {record['data']} split {record.get('split')!r}, "
            f"{record.get('images')} images"
        )
    return "; ".join(words)


def store_calibration(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write the :data:`STORED_KEYS` of ``record`` into ``folder/config.json``'s metadata
    (atomically) and render the model card again; returns the ``config.json`` path. The weights
    are not touched.

    Training that saves new weights into the folder rewrites ``config.json`` without it: a
    calibration belongs to the weights it was fitted on.
    """
    config = read_pretrained_config(folder)
    config.setdefault("metadata", {})[CALIBRATION_KEY] = stored_record(record)
    path = Path(folder) / CONFIG_NAME
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    write_model_card(folder, config)  # the folder's README.md shows the calibration too
    return path


def copy_model(
    source: str | Path, target: str | Path, run_config: Mapping[str, Any] | None = None
) -> Path:
    """Copy the ``save_pretrained`` folder ``source`` (every file: config, weights, card) to the
    new or empty folder ``target``: copied beside it first, then renamed into place, so that an
    interrupted copy leaves no half model.

    ``run_config``: what the copy keeps of the run ``source`` came from
    (:func:`~sanet.inference.runs.embedded_run_config`), stored as ``metadata.run_config`` of its
    ``config.json``: the copy lies outside the run, and without it would be predicted, evaluated
    and served with the default protocol instead of the run's (docs/python.md).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / temp_name(target.name).replace("*", "copy")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if run_config:
        config = read_pretrained_config(staging)
        config.setdefault("metadata", {})["run_config"] = dict(run_config)
        atomic_write_text(staging / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    os.replace(staging, target)  # an empty target folder is replaced
    return target
