"""Config loading: strict keys and types, overrides, every shipped recipe loads."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

import sanet
from sanet.config import ModelConfig, config_from_dict, load_config, recipe_path, save_config
from sanet.models.options import ModelOptions

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None, ["train.lr=0.01", "train.epochs=3", "eval.scales=[0.5, 1]", "train.amp=bf16"]
    )
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 3 and cfg.train.amp == "bf16"
    assert cfg.eval.scales == [0.5, 1.0] and all(isinstance(s, float) for s in cfg.eval.scales)
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for a float
    assert (
        load_config(None, ["model.pretrained_backbone=w.pth"]).model.pretrained_backbone == "w.pth"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "unknown key train.lrr. Did you mean 'lr'"),
        ("trian.lr=0.1", "unknown section 'trian'. Did you mean 'train'"),
        ("train.epochs=ten", "train.epochs must be int, got 'ten'"),
        ("train.epochs=1.5", "train.epochs must be int"),
        ("train.amp=fp8", r"train.amp must be one of \['auto', 'none', 'bf16', 'fp16'\]"),
        ("train.channels_last=1", "train.channels_last must be bool"),
        ("lr=0.1", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_recipe_model_keys_are_the_model_options() -> None:
    """The recipe's model section offers every head option, with the same default and choices
    (ModelConfig inherits them from ModelOptions: one definition)."""
    hints = typing.get_type_hints(ModelConfig)
    option_hints = typing.get_type_hints(ModelOptions)
    for field in dataclasses.fields(ModelOptions):
        assert getattr(ModelConfig(), field.name) == field.default, field.name
        assert typing.get_args(hints[field.name]) == typing.get_args(option_hints[field.name])


def test_model_options_reach_the_models_that_take_them(tmp_path: Path) -> None:
    from sanet.training.trainer import Trainer

    sa = [
        "model.attn_act=sigmoid",
        "model.attn_combine=residual",
        "model.head_init=kaiming",
        "model.upsample=bilinear",
        "model.gate=sigmoid",
        "model.fuse_channels=64",
        "model.dropout=0.3",
        "model.backbone=resnet10t",
        "data.options={num_images: 2, size: 32}",
        "data.base_size=32",
        "data.crop_size=32",
        "train.batch_size=2",
        "data.num_workers=0",
    ]
    model = Trainer(load_config(None, sa), tmp_path / "a").model
    assert model.config == {
        "num_classes": 7,
        "backbone": "resnet10t",
        "output_stride": 8,
        "gate": "sigmoid",
        "attn_act": "sigmoid",
        "upsample": "bilinear",
        "attn_combine": "residual",
        "fuse_channels": 64,
        "dropout": 0.3,
        "head_init": "kaiming",
    }
    head = model.head.heads[0]
    assert (head.attn_act, head.upsample, head.combine) == ("sigmoid", "bilinear", "residual")
    assert model.head.mask.in_channels == 64 and model.head.dropout.p == 0.3
    # one recipe serves every model of `sanet compare`: each keeps the options it has
    fcn = Trainer(load_config(None, [*sa, "model.name=fcn"]), tmp_path / "b").model
    assert fcn.config == {
        "num_classes": 7,
        "backbone": "resnet10t",
        "output_stride": 8,
        "dropout": 0.3,
        "head_init": "kaiming",
    }
    assert fcn.head.block[1].p == 0.3
    with pytest.raises(
        ValueError, match="'fcn' has no option 'attn_act'; it takes dropout, head_init"
    ):
        sanet.build_model("fcn", backbone="resnet10t", num_classes=3, attn_act="sigmoid")


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.lr=0.005", "data.options={num_images: 8}"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_recipes_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.name in ("sanet", "sanet_se", "fcn")
    # the package embeds the same recipes (`recipe_path`, `sanet demo`): keep the copies equal
    assert recipe_path(path.stem).read_text() == path.read_text()


def test_paper_recipes_match_the_paper() -> None:
    context = load_config(CONFIGS[0].parent / "sanet_r101s_context.yaml")
    assert (context.model.backbone, context.model.num_classes) == ("resnet101s", 59)
    assert (context.train.epochs, context.train.lr, context.train.batch_size) == (80, 0.001, 16)
    assert (context.loss.alpha, context.loss.beta) == (0.2, 0.8)
    assert (context.data.base_size, context.data.crop_size) == (520, 480)
    voc = load_config(CONFIGS[0].parent / "sanet_r101s_voc_aug.yaml")
    assert (voc.data.dataset, voc.train.epochs, voc.model.num_classes) == ("voc-aug", 50, 21)
