"""The model card: ``README.md`` of a ``save_pretrained`` folder, in the Hugging Face Hub's format.

A folder a user publishes (``huggingface_hub.upload_folder``, docs/deploy.md) should tell a
reader what the model is, how it was measured and how to load it. The card is rendered from
``config.json`` alone — the constructor arguments and the ``metadata`` the places that know the
numbers store there (:data:`CARD_KEYS`): the trainer (``validation``, ``recipe``, after each best
validation), ``sanet compare`` (``compare``: seeds and spread), ``sanet calibrate``
(``calibration``) — so :func:`write_model_card` can render it again whenever one of them adds a
record. Loading never reads the card: ``from_pretrained`` stays strict about ``config.json`` and
the weights, and ignores every other file.

Layout: YAML front matter (``library_name``, ``pipeline_tag``, ``tags``, ``datasets``,
``metrics`` and a ``model-index`` with the mIoU and its protocol) between ``---`` lines, then
Markdown sections.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sanet._files import atomic_write_text
from sanet.models.pretrained import RECORD_KEY

README_NAME = "README.md"
#: ``config.json`` metadata keys the card reads besides ``class_names``.
CARD_KEYS = ("validation", "recipe", "compare", "calibration", "parity")
#: Recipe keys whose values may be local paths: only their last part is published.
_PATH_KEYS = {("data", "root"), ("model", "init_from"), ("model", "pretrained_backbone")}
_SUMMARY = {
    "sanet": "SANet: dilated backbone and four Squeeze-and-Attention heads (Zhong et al., "
    "CVPR 2020, Fig. 3)",
    "sanet_se": "SANet with SE blocks in place of SA (the paper's Table 3 ablation)",
    "fcn": "dilated FCN baseline (the paper's Fig. 5)",
}


def recipe_record(recipe: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A run's config for the card, with local paths cut to their last part (a published card
    should not show the trainer's home directory)."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in recipe.items():
        out[section] = {}
        for key, value in values.items():
            if (section, key) in _PATH_KEYS and isinstance(value, str) and value:
                value = Path(value).name
            out[section][key] = value
    return out


def _dataset(meta: Mapping[str, Any]) -> str | None:
    recipe, validation = meta.get("recipe") or {}, meta.get("validation") or {}
    return validation.get("dataset") or (recipe.get("data") or {}).get("dataset")


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _protocol_words(protocol: Mapping[str, Any]) -> str:
    scales = list(protocol.get("scales") or [1.0])
    how = "single scale" if scales == [1.0] else f"scales {scales}"
    if protocol.get("flip"):
        how += " + flip"
    return (
        f"{how}, sliding window {protocol.get('crop_size')} px every {protocol.get('stride')} px"
        + (f", base size {protocol['base_size']}" if protocol.get("base_size") else "")
    )


def front_matter(config: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata (the Hub reads it for search, widgets and leaderboards)."""
    meta = config.get("metadata") or {}
    name, backbone = str(config.get("name", "sanet")), str(config.get("backbone", ""))
    dataset = _dataset(meta)
    tags = ("sanet", "semantic-segmentation", name, backbone, "safetensors")
    front: dict[str, Any] = {
        "library_name": "sanet",
        "pipeline_tag": "image-segmentation",
        "tags": list(dict.fromkeys(t for t in tags if t)),  # in order, once each
    }
    if dataset:
        front["datasets"] = [dataset]
    validation, compare = meta.get("validation") or {}, meta.get("compare") or {}
    metrics = []
    if "mIoU" in validation:
        metrics.append(
            {
                "type": "mean_iou",
                "name": f"val mIoU (best validation, {_protocol_words(validation['protocol'])})",
                "value": round(float(validation["mIoU"]), 4),
                "args": {"protocol": dict(validation["protocol"])},
                "verified": False,
            }
        )
    if "mIoU_mean" in compare:
        metrics.append(
            {
                "type": "mean_iou",
                "name": f"val mIoU of the final weights, mean of {len(compare['mIoU'])} seeds",
                "value": round(float(compare["mIoU_mean"]), 4),
                "args": {"seeds": list(compare["seeds"]), "std": compare["mIoU_std"]},
                "verified": False,
            }
        )
    if metrics:
        front["metrics"] = ["mean_iou"]
        split = validation.get("split") or "val"
        front["model-index"] = [
            {
                "name": f"{name}-{backbone}" + (f"-{dataset}" if dataset else ""),
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Semantic Segmentation"},
                        "dataset": {"name": dataset or "unknown", "type": dataset or "unknown"}
                        | {"split": split},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return front


def _weights_row(record: Mapping[str, Any] | None) -> str:
    """Where a pretrained backbone's weights came from (docs/pretrained.md), or nothing."""
    if not record:
        return ""
    return (
        f"| backbone weights | `{record['source']}` ({record.get('package', '')}, sha256 "
        f"`{str(record['sha256'])[:12]}…`), input mean {record['mean']} std {record['std']} |\n"
    )


def render_model_card(config: Mapping[str, Any]) -> str:
    """``README.md`` of a folder whose ``config.json`` holds ``config``."""
    meta = config.get("metadata") or {}
    name, backbone = str(config.get("name", "sanet")), str(config.get("backbone", ""))
    names: Sequence[str] = meta.get("class_names") or []
    dataset = _dataset(meta)
    head = yaml.safe_dump(front_matter(config), sort_keys=False, allow_unicode=True, width=1000)
    options = {
        k: v
        for k, v in config.items()
        if k not in ("name", "backbone", "num_classes", "output_stride", "metadata", RECORD_KEY)
    }
    parts = [
        f"---\n{head}---\n",
        f"# {name} · {backbone}" + (f" · {dataset}" if dataset else ""),
        "A semantic segmentation model trained with sanet, a toolkit for Squeeze-and-Attention "
        "Networks (Zhong et al., CVPR 2020). Every number below was measured by sanet on this "
        "model; none is the paper's.",
        "## Model",
        "| | |\n|---|---|\n"
        f"| architecture | `{name}`: {_SUMMARY.get(name, name)} |\n"
        f"| backbone | `{backbone}`, output stride {config.get('output_stride')} |\n"
        f"| classes | {config.get('num_classes')}: {', '.join(names) or 'unnamed'} |\n"
        f"{_weights_row(config.get(RECORD_KEY))}"
        f"| head options | {', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'} |",
        *_evaluation(meta, names),
        *_seeds(meta),
        *_records(meta),
        "## How to use",
        '```python\nimport sanet\npredictor = sanet.Predictor("path/to/this/folder")  # or '
        'huggingface_hub.snapshot_download(REPO)\nmask = predictor.predict("image.jpg")  '
        "# (H, W) class ids\n```\n\n`sanet.load_model(folder)` gives the PyTorch module; "
        "`sanet export --checkpoint folder --out model.onnx` an ONNX file (`--int8` for CPUs).",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _evaluation(meta: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    v = meta.get("validation") or {}
    if "mIoU" not in v:
        return []
    rows = "\n".join(
        f"| {names[k] if k < len(names) else k} | {_number(iou)} |"
        for k, iou in enumerate(v.get("IoU") or [])
    )
    when = f"epoch {v.get('epoch')}, step {v.get('step')}" if "step" in v else "training"
    return [
        "## Evaluation",
        f"**mIoU {_number(float(v['mIoU']))}**, pixel accuracy {_number(v.get('pixAcc'))} on "
        f"{v.get('dataset', 'the')} `{v.get('split', 'val')}` ({v.get('images', '?')} images), "
        f"the best validation during training ({when}). Protocol: "
        f"{_protocol_words(v.get('protocol') or {})} (`sanet.inference.EvalProtocol`: "
        f"`{json.dumps(v.get('protocol') or {})}`). mIoU averages the classes present in the "
        "prediction or the ground truth.",
        f"| class | IoU |\n|---|---|\n{rows}" if rows else "",
    ]


def _seeds(meta: Mapping[str, Any]) -> list[str]:
    c = meta.get("compare") or {}
    if "mIoU" not in c:
        return []
    rows = "\n".join(
        f"| {s}{' (this folder)' if s == c.get('seed') else ''} | {_number(m)} |"
        for s, m in zip(c["seeds"], c["mIoU"], strict=True)
    )
    versus, paired = "", c.get("paired")
    if paired:
        versus = f" Against `{paired['vs']}` on the same seeds: {paired['mean']:+.4f} mIoU"
        if paired.get("ci95"):
            low, high = paired["ci95"]
            versus += f" (95 % CI {low:+.4f} … {high:+.4f})"
        versus += "."
    return [
        "## Seeds (`sanet compare`)",
        f"The same recipe trained with {len(c['seeds'])} seeds ({c.get('metric', 'val mIoU')}): "
        f"mean {_number(c['mIoU_mean'])} ± {_number(c['mIoU_std'])} (sample std).{versus}",
        f"| seed | mIoU |\n|---|---|\n{rows}",
    ]


def _records(meta: Mapping[str, Any]) -> list[str]:
    out = []
    recipe = meta.get("recipe")
    if recipe:
        text = yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True)
        out += ["## Recipe", f"The recipe the run was trained with:\n\n```yaml\n{text}```"]
    for key, title in (("calibration", "Calibration"), ("parity", "Parity")):
        if meta.get(key):
            text = yaml.safe_dump(meta[key], sort_keys=False, allow_unicode=True)
            out += [f"## {title}", f"```yaml\n{text}```"]
    return out


def write_model_card(directory: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory/README.md`` (atomically) from ``config`` (default: the folder's
    ``config.json``); returns its path. Call it again after adding a record to the metadata."""
    directory = Path(directory)
    if config is None:
        config = json.loads((directory / "config.json").read_text())
    path = directory / README_NAME
    atomic_write_text(path, render_model_card(config))
    return path
