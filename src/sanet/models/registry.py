"""Building a model by name and loading a trained one from wherever it was saved.

``build_model`` builds any row of ``MODEL_KINDS`` (``segmentation.py``), with typed shortcuts
``sanet``, ``sanet_se`` and ``fcn``; ``load_model`` accepts the three
places a trained model lives: a ``save_pretrained`` folder, a run directory, a ``.pt`` training
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanet._files import safe_torch_load
from sanet.errors import DamagedFileError, NotFoundError, UsageError, suggest
from sanet.models.options import ModelOptions
from sanet.models.segmentation import (
    CONFIG_NAME,
    FCN,
    MODEL_KINDS,
    SANet,
    SegmentationModel,
    read_pretrained_config,
)
from sanet.rundir import RunDir


def build_model(
    name: str,
    backbone: str = "resnet50s",
    num_classes: int = 21,
    output_stride: int = 8,
    pretrained_backbone: bool | str | Path = False,
    *,
    freeze_backbone: bool = False,
    options: ModelOptions | None = None,
    **option_values: Any,
) -> SegmentationModel:
    """Build a model by name: ``"sanet"``, ``"sanet_se"`` or ``"fcn"`` (:data:`MODEL_KINDS`).

    Args:
        backbone: any timm CNN with ``features_only``/``output_stride`` (presets
            ``resnet50s``, ``resnet101s``, ``tf_efficientnet_b7``), or a ViT read through a
            simple feature pyramid (``vit_small_patch14_dinov2``, ``..._reg4_dinov2``,
            ``deit3_*``, ``eva02_*``: :mod:`sanet.models.vit`).
        pretrained_backbone: ``False``, ``True`` (timm download) or a local weights file.
        freeze_backbone: the pretrained backbone gets no gradients and stays in eval mode;
            only the heads (and a ViT's feature pyramid) learn (:meth:`Backbone.freeze`).
        options: a whole :class:`ModelOptions` (a recipe's; each model uses its own fields).
        option_values: single options instead (``gate=``, ``attn_act=``, ``upsample=``,
            ``dropout=`` ...); an option the model does not have is refused.
    """
    if name not in MODEL_KINDS:
        raise UsageError(
            f"Unknown model {name!r}; choose one of {list_models()}.{suggest(name, MODEL_KINDS)}"
        )
    kind = MODEL_KINDS[name]
    if option_values:
        if options is not None:
            raise UsageError("Pass either options=ModelOptions(...) or single options, not both.")
        options = ModelOptions.from_mapping(option_values, kind.options, name)
    model = kind.build(
        num_classes,
        backbone,
        output_stride=output_stride,
        pretrained_backbone=pretrained_backbone,
        options=options,
    )
    if freeze_backbone:
        model.backbone.freeze()
    return model


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODEL_KINDS)


def sanet(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> SANet:
    """SANet with Squeeze-and-Attention heads (Fig. 3)."""
    return build_model("sanet", backbone, num_classes, **kwargs)  # type: ignore[return-value]


def sanet_se(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> SANet:
    """SANet with SE blocks in place of SA: the Table 3 ablation."""
    return build_model("sanet_se", backbone, num_classes, **kwargs)  # type: ignore[return-value]


def fcn(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> FCN:
    """Dilated FCN baseline on the same backbone (Fig. 5)."""
    return build_model("fcn", backbone, num_classes, **kwargs)  # type: ignore[return-value]


def load_model(
    path: str | Path, map_location: str = "cpu"
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Load a model for inference from any of the three places a trained model lives.

    ``path`` is a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``), a training
    run directory (uses ``RUN/model``, else ``RUN/checkpoints/best.pt``/``last.pt``) or a ``.pt``
    training checkpoint (``{"model": state_dict, "model_config": {...}, ...}``).

    Returns:
        ``(model in eval mode, metadata)``; metadata holds e.g. ``class_names`` when known.

    Raises:
        DamagedFileError: a truncated or unsafe file; the message names the run's other weights.
    """
    try:
        return _load(Path(path), map_location)
    except DamagedFileError as err:
        run = RunDir.containing(err.path) if err.path else None
        others = run.other_weights(err.path) if run and err.path else []
        if not others:
            raise
        instead = " or ".join(repr(str(p)) for p in others)
        raise DamagedFileError(err.path, err.problem, f"load {instead} instead") from err


def _load(path: Path, map_location: str) -> tuple[SegmentationModel, dict[str, Any]]:
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            meta = read_pretrained_config(path).get("metadata", {})
            return SegmentationModel.from_pretrained(path, map_location), meta
        available = RunDir(path).available_weights()
        if available:
            return _load(available[0], map_location)
        raise NotFoundError(
            f"{str(path)!r} is neither a save_pretrained folder (config.json) nor a run directory "
            "(model/ or checkpoints/*.pt). Pass one of those, or a .pt checkpoint file."
        )
    if path.suffix.lower() == ".onnx":
        raise UsageError(
            f"{str(path)!r} is an ONNX export: it runs through sanet.Predictor, `sanet predict`, "
            "`eval` and `serve`, but this needs the PyTorch model: pass the run directory, its "
            "model/ folder or a .pt checkpoint."
        )
    ckpt = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UsageError(
            f"{str(path)!r} is not a sanet training checkpoint (expected keys 'model' and "
            "'model_config'). Pass a run directory, RUN/checkpoints/*.pt or a save_pretrained folder."
        )
    model = SegmentationModel.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval(), dict(ckpt.get("metadata", {}))
