"""Config loading: strict keys and types, overrides, every shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest

import sanet
from sanet.config import config_from_dict, load_config, model_kwargs, recipe_path, save_config

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
        ("train.amp=fp8", r"train.amp must be one of \['none', 'bf16', 'fp16'\]"),
        ("train.channels_last=1", "train.channels_last must be bool"),
        ("lr=0.1", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_model_options_reach_the_models_that_take_them() -> None:
    sa = ["model.attn_act=sigmoid", "model.attn_combine=residual", "model.head_init=kaiming"]
    options = model_kwargs(load_config(None, sa).model)
    assert options == {"attn_act": "sigmoid", "attn_combine": "residual", "head_init": "kaiming"}
    # one recipe serves every model of `sanet compare`: SA-only options are left out for fcn
    fcn = model_kwargs(load_config(None, [*sa, "model.name=fcn"]).model)
    assert fcn == {"head_init": "kaiming"}
    model = sanet.build_model("fcn", backbone="resnet18d", num_classes=3, **fcn)
    assert model.config["head_init"] == "kaiming"


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
