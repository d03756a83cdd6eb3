"""Run configuration: dataclasses for each YAML section, strict loading and ``--set`` overrides.

Only this module and the CLI turn a config into constructor calls; library objects never see it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from sanet._files import atomic_write_text
from sanet.conventions import BASE_SIZE, EVAL_CROP_SIZE, EVAL_STRIDE
from sanet.errors import ConfigError, NotFoundError, arg, speaks_cli, suggest
from sanet.models.options import ModelOptions
from sanet.models.vit import vit_patch_size


@dataclass(frozen=True)
class ModelConfig(ModelOptions):
    """``model``: which network, and its head options (the fields of
    :class:`~sanet.models.ModelOptions`, inherited: one definition of their names, types and
    defaults; docs/paper-fidelity.md gives the reasons)."""

    name: str = "sanet"
    backbone: str = "resnet50s"
    output_stride: int = 8
    pretrained_backbone: bool | str = False  # True: timm download; str: a local weights file
    num_classes: int = 0  # 0: take it from the dataset
    init_from: str = ""  # initialise all weights from a run dir / .pt / save_pretrained folder
    freeze_backbone: bool = False  # train only the heads (and a ViT's feature pyramid)

    def options(self) -> ModelOptions:
        """The head options alone, as the models take them."""
        return ModelOptions(**{name: getattr(self, name) for name in ModelOptions.names()})


@dataclass
class LossConfig:
    alpha: float = 0.2  # L_cat weight (Fig. 4)
    beta: float = 0.8  # L_dense weight (Fig. 4)


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    base_size: int = BASE_SIZE  # long side at scale 1.0; 0: each image's own long side
    crop_size: int = 480
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # long side × base_size
    num_workers: int = 4
    options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset keyword arguments
    # k-fold cross-validation (`sanet audit-labels RECIPE --folds K`): with folds = K ≥ 2 the run
    # trains on the other folds of train_split and validates on fold `fold` of it (val_split unused)
    folds: int = 0
    fold: int = 0


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 16  # global batch per optimiser step (all ranks, all accumulation steps)
    lr: float = 0.001  # base LR at batch 16; scaled by batch_size / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    head_lr_mult: float = 10.0
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear LR warm-up over the first steps, then poly (0: none)
    bn_momentum: float = 0.1  # BatchNorm running-stat momentum of every BN layer (PyTorch's 0.1)
    accumulate: int = 1  # micro-batches per optimiser step
    # auto: bf16 autocast + channels-last where the CPU has bf16 units (AMX, AVX512_BF16) or the
    # GPU supports bf16, float32 elsewhere (sanet.devices.choose_precision); the run's
    # config.yaml records what it chose. The shipped recipes pin their choice.
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default); results depend on it, so pin it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    val_every: int = 1  # epochs between validations (0: only at the end)
    log_every: int = 10  # steps between host syncs (loss logging, non-finite check)
    max_steps: int = 0  # stop after this many optimiser steps in total (0: no limit)
    nonfinite: Literal["stop", "skip"] = "stop"
    layer_decay: float = 1.0  # a ViT's layer-wise LR decay (BEiT): block i of d at lr·decay^(d-i)
    checkpointing: bool = False  # recompute the backbone's activations in backward (memory)


@dataclass
class EvalConfig:
    """The run's evaluation protocol (docs/paper-fidelity.md): what ``sanet.evaluate`` and
    ``Predictor`` use for a checkpoint of this run unless told otherwise. Validation during training uses
    only ``crop_size`` and ``stride``, at single scale (``trainer.validation_protocol``)."""

    scales: list[float] = field(default_factory=lambda: [1.0])  # of data.base_size; [1.0]: as is
    flip: bool = False  # also predict the mirror image and average the probabilities
    crop_size: int = EVAL_CROP_SIZE  # sliding-window size
    stride: int = EVAL_STRIDE  # sliding-window step


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the embedded recipes ``sanet demo`` runs: the default (SANet on a pretrained EfficientNet-Lite0,
#: issue 31: docs/learning.md) and the from-scratch demo it replaced, which the studies and
#: benchmarks in docs/ still use
DEMO_RECIPES = ("demo", "demo_scratch")


def recipe_path(name: str) -> Path:
    """The embedded recipe ``name`` (``sanet/configs/<name>.yaml``, e.g. ``"demo"``)."""
    from importlib import resources

    folder = Path(str(resources.files("sanet") / "configs"))
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise NotFoundError(
            f"No embedded recipe {name!r}; the package ships {', '.join(names)}.{suggest(name, names)}"
        )
    return path


def resolve_recipe(config: str | Path) -> Path:
    """The recipe file ``config`` names: a YAML file, or an embedded recipe by name
    (``"demo"``: :func:`recipe_path`) when no file of that name exists."""
    path = Path(config)
    if path.is_file() or path.suffix or len(path.parts) != 1:
        return path
    try:
        return recipe_path(str(config))
    except NotFoundError as err:
        raise NotFoundError(f"Config file {str(config)!r} does not exist. {err}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"Config file {str(path)!r} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{str(path)!r} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{str(path)!r} must hold a mapping of sections, got {type(raw).__name__}."
            )
    return config_from_dict(
        apply_overrides(raw, overrides), source=str(path) if path else "defaults"
    )


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | None) -> dict[str, Any]:
    """Set each ``section.key=value`` of ``overrides`` (the value read as YAML) in ``raw``."""
    for item in overrides or []:
        key, value = _split_override(item)
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"Section {section!r} must be a mapping.")
        raw[section][name] = yaml.safe_load(value) if value != "" else ""
    return raw


def with_overrides(cfg: Config, overrides: Sequence[str] | None) -> Config:
    """A new :class:`Config`: ``cfg`` with ``section.key=value`` overrides, checked as a
    loaded recipe's are (``cfg`` itself is not changed)."""
    if not overrides:
        return cfg
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides), source="config")


def override_hint(item: str) -> str:
    """How the caller passes the override ``item`` (``"train.max_steps=N"``): ``--set
    train.max_steps=N`` on the command line, ``overrides=['train.max_steps=N']`` from Python."""
    if speaks_cli():
        return f"{arg('overrides')} {item}"
    return f"{arg('overrides')}=[{item!r}]"


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config`, rejecting unknown sections/keys and values of the wrong type."""
    sections = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
    built: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section {section!r}.{suggest(section, sections)}")
        kind = sections[section]
        fields = {f.name: f for f in dataclasses.fields(kind)}
        if values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"{source}: section {section!r} must be a mapping of key: value lines, got a "
                f"{type(values).__name__} ({values!r}). Write it as `{section}:` followed by "
                f"indented `key: value` lines."
            )
        for key, value in (values or {}).items():
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}.{suggest(key, fields)} "
                    f"Known keys in {section}: {', '.join(fields)}."
                )
            hint = typing.get_type_hints(kind)[key]
            built.setdefault(section, {})[key] = _coerce(value, hint, f"{section}.{key}", source)
    cfg = Config(**{section: sections[section](**values) for section, values in built.items()})
    check_ranges(cfg, source)
    return cfg


# The smallest value each number may take (types are checked by the annotations). A value out
# of range fails when the config is loaded, not steps into a run (e.g. log_every=0 used to
# crash after the first step, batch_size=0 inside torch).
MINIMUM: dict[str, float] = {
    "model.num_classes": 0,  # 0: the dataset's
    "model.fuse_channels": 1,
    "model.dropout": 0,
    "loss.alpha": 0,
    "loss.beta": 0,
    "data.base_size": 0,
    "data.crop_size": 32,  # the models need ≥ 32 px
    "data.num_workers": 0,
    "data.folds": 0,
    "data.fold": 0,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.lr": 0,
    "train.momentum": 0,
    "train.weight_decay": 0,
    "train.head_lr_mult": 0,
    "train.poly_power": 0,
    "train.accumulate": 1,
    "train.seed": 0,
    "train.val_every": 0,
    "train.log_every": 1,
    "train.max_steps": 0,
    "train.layer_decay": 0,
    "eval.crop_size": 32,
    "eval.stride": 1,
}
_POSITIVE = {"train.lr", "train.head_lr_mult", "train.layer_decay"}  # strictly above the minimum
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_ranges(cfg: Config, source: str = "config") -> None:
    """Refuse values outside :data:`MINIMUM` and other impossible settings, naming the key."""
    values = {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}
    for key, low in MINIMUM.items():
        value = values[key]
        if value < low or (key in _POSITIVE and value == low):
            bound = f"> {low}" if key in _POSITIVE else f"≥ {low}"
            raise ConfigError(f"{source}: {key} must be {bound}, got {value!r}.")
    if cfg.model.dropout >= 1:
        raise ConfigError(f"{source}: model.dropout must be < 1, got {cfg.model.dropout!r}.")
    scale_range = cfg.data.scale_range
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ConfigError(
            f"{source}: data.scale_range must be [low, high] with 0 < low ≤ high, got "
            f"{cfg.data.scale_range!r} (the paper: [0.5, 2.0])."
        )
    if cfg.data.folds == 1 or (cfg.data.folds and cfg.data.fold >= cfg.data.folds):
        raise ConfigError(
            f"{source}: data.folds must be 0 (off) or ≥ 2 and data.fold below it, got folds "
            f"{cfg.data.folds}, fold {cfg.data.fold}."
        )
    if not cfg.eval.scales or min(cfg.eval.scales) <= 0:
        raise ConfigError(f"{source}: eval.scales must be positive numbers, got {cfg.eval.scales}.")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(
            f"{source}: model.output_stride must be 8, 16 or 32, got {cfg.model.output_stride}."
        )
    if cfg.train.layer_decay > 1:
        raise ConfigError(
            f"{source}: train.layer_decay must be in (0, 1] (1: off), got {cfg.train.layer_decay}."
        )
    check_patch_windows(cfg, source)
    if not _DEVICE.match(cfg.train.device):
        raise ConfigError(
            f"{source}: train.device must be auto, cpu, mps, cuda or cuda:N, got {cfg.train.device!r}."
        )


def check_patch_windows(cfg: Config, source: str = "config") -> None:
    """A ViT backbone's patch size divides the training crops and the evaluation windows (a
    window that it does not divide is padded by the model: time spent on padding)."""
    patch = vit_patch_size(cfg.model.backbone)
    if not patch:
        return
    for key, size in (
        ("data.crop_size", cfg.data.crop_size),
        ("eval.crop_size", cfg.eval.crop_size),
    ):
        if size % patch:
            low, high = size - size % patch, size - size % patch + patch
            raise ConfigError(
                f"{source}: {key}={size} is not a multiple of the patch size {patch} of "
                f"{cfg.model.backbone!r} (each window would be padded to {high}). Fix: "
                f"{key}={low if low >= 32 else high} or {high}."
            )


# --resume (docs/reliability.md). A key in RESUME_MAY_CHANGE may take any new value and one in
# RESUME_MAY_GROW a larger one (0 = no limit counts as the largest): neither changes which
# samples come next nor the maths of a step. Every other key does (batch size, seed, LR, the
# model, the loss, the data ...), so --resume refuses a change of it, naming the key.
RESUME_MAY_CHANGE = frozenset(
    {
        "data.num_workers",  # the sample order does not depend on workers (tests/test_trainer.py)
        "data.root",  # the same dataset, moved (another machine)
        "train.log_every",
        "train.val_every",
        "train.nonfinite",  # logging, validation, NaN policy
        "train.device",
        "train.channels_last",
        "train.compile",
        "train.deterministic",  # kernels
        "train.checkpointing",  # recomputes the same activations
        "model.init_from",
        "model.pretrained_backbone",  # read when a run starts, not on resume
        "eval.*",  # evaluation protocol: read after training steps, never by them
    }
)
RESUME_MAY_GROW = frozenset({"train.epochs", "train.max_steps"})  # the poly schedule stretches


def resume_conflicts(saved: dict[str, Any], now: Config) -> list[str]:
    """The changes from a run's saved config that ``--resume`` refuses, as
    ``"section.key: old -> new"`` (keys the saved config predates count as their default)."""
    defaults, conflicts = Config().to_dict(), []
    for section, values in now.to_dict().items():
        old_values = {**defaults[section], **(saved.get(section) or {})}
        for key, new in values.items():
            old, name = old_values.get(key), f"{section}.{key}"
            if old == new or name in RESUME_MAY_CHANGE or f"{section}.*" in RESUME_MAY_CHANGE:
                continue
            if name in RESUME_MAY_GROW and _limit(new) >= _limit(old):
                continue
            conflicts.append(f"{name}: {old!r} -> {new!r}")
    return conflicts


def _limit(value: Any) -> float:
    return float("inf") if value == 0 else float(value)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        raise ConfigError(
            f"Override {item!r} must look like section.key=value (e.g. train.lr=0.01)."
        )
    return key.strip(), value.strip()


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation; ints are accepted where floats are expected."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {value!r}.")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key, source)
            except ValueError:
                continue
        raise ConfigError(f"{source}: {key} must be {_name(hint)}, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}.")
        return [_coerce(v, args[0], key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}.")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(
        f"{source}: {key} must be {_name(hint)}, got {value!r} ({type(value).__name__})."
    )


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
