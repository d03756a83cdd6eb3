"""The training switches foundation backbones need, each doing what it says: a frozen backbone
does not change in a step (only the pyramid and heads learn), layer-wise LR decay gives each
block its LR, activation checkpointing recomputes the blocks and leaves every gradient equal;
and the recipe keys reach the Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sanet
from _vit_tiny import TINY_VIT
from conftest import tiny_recipe
from sanet.config import load_config, resume_conflicts
from sanet.errors import UsageError
from sanet.training import engine
from sanet.training.trainer import Trainer

K = 3


def _batch(size: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size + 14, generator=g), torch.randint(
        0, K, (2, size, size + 14), generator=g
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("backbone", [TINY_VIT, "resnet10t"])
def test_a_frozen_backbone_is_unchanged_by_a_step_and_the_rest_learns(backbone: str) -> None:
    """Weights and buffers (a CNN's BatchNorm statistics) of the body stay as they were; the
    heads (and a ViT's pyramid) move; the optimiser holds no frozen parameter."""
    model = sanet.build_model("sanet", backbone=backbone, num_classes=K, freeze_backbone=True)
    model.train()
    assert not model.backbone.body.training and model.head.training
    body, rest = _state(model.backbone.body), _state(model.head)
    pyramid = _state(model.backbone.pyramid) if model.backbone.pyramid else {}
    groups = engine.param_groups(model, lr=0.1, head_lr_mult=10, weight_decay=1e-4)
    optimizer = engine.make_sgd(groups, lr=0.1, momentum=0.9)
    frozen = {id(p) for p in model.backbone.body.parameters()}
    assert not frozen & {id(p) for g in optimizer.param_groups for p in g["params"]}
    result = engine.train_step(model, sanet.SANetLoss(), [_batch()], optimizer, None)
    assert bool(result.finite)
    for key, value in _state(model.backbone.body).items():
        assert torch.equal(value, body[key]), key
    moved = [k for k, v in _state(model.head).items() if not torch.equal(v, rest[k])]
    assert "mask.weight" in moved and "fuse.0.weight" in moved
    for key, value in pyramid.items():  # the pyramid's norms, deconvolutions
        if key.endswith("weight"):
            assert not torch.equal(model.backbone.pyramid.state_dict()[key], value), key


def test_layer_decay_gives_each_block_its_lr() -> None:
    """BEiT's rule on a 4-block ViT at decay 0.5: block i at lr·0.5^(4-i), the embeddings at
    lr·0.5^5, the heads and pyramid at head_lr_mult·lr (written out by hand)."""
    model = sanet.build_model("sanet", backbone=TINY_VIT, num_classes=K)
    groups = engine.param_groups(model, lr=0.1, head_lr_mult=10, weight_decay=1e-4, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    want = {
        "blocks.3.": 0.05,
        "blocks.2.": 0.025,
        "blocks.1.": 0.0125,
        "blocks.0.": 0.00625,
        "patch_embed.": 0.003125,
        "cls_token": 0.003125,
        "pos_embed": 0.003125,
    }
    named = dict(model.backbone.body.named_parameters())
    for name, param in named.items():
        (prefix,) = [p for p in want if name.startswith(p)]
        assert lr_of[id(param)] == pytest.approx(want[prefix]), name
    others = [p for n, p in model.named_parameters() if not n.startswith("backbone.body.")]
    assert others and [lr_of[id(p)] for p in others] == pytest.approx([1.0] * len(others))
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in one group
    assert groups[0]["name"] == "backbone" and groups[0]["lr"] == 0.1  # what the log reports
    with pytest.raises(UsageError, match=r"applies to ViT backbones .* train.layer_decay=1"):
        cnn = sanet.build_model("sanet", backbone="resnet10t", num_classes=K)
        engine.param_groups(cnn, lr=0.1, head_lr_mult=10, weight_decay=0, layer_decay=0.5)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model.zero_grad()
    images, masks = _batch()
    sanet.SANetLoss()(model(images), masks)["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", [TINY_VIT, "resnet10t"])
def test_checkpointing_recomputes_and_leaves_the_gradients_equal(backbone: str) -> None:
    model = sanet.build_model("sanet", backbone=backbone, num_classes=K, dropout=0.0).train()
    calls = []
    first = model.backbone.body.blocks[1] if backbone == TINY_VIT else model.backbone.body.layer2
    first.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops early
    plain = _grads(model)
    assert len(calls) == 1
    model.backbone.set_grad_checkpointing(True)
    calls.clear()
    checkpointed = _grads(model)
    assert len(calls) == 2  # forward, and again in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0, msg=name)


def test_the_recipe_keys_reach_the_trainer(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        tiny_recipe(
            size=56,
            backbone=TINY_VIT,
            model__freeze_backbone=True,
            train__layer_decay=0.5,
            train__checkpointing=True,
            train__max_steps=1,
            eval__crop_size=56,
            eval__stride=28,
        ),
    )
    trainer = Trainer(cfg, tmp_path / "run")
    body = trainer.model.backbone.body
    before = _state(body)
    assert body.grad_checkpointing and not any(p.requires_grad for p in body.parameters())
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["backbone", *(f"backbone.layer{k}" for k in range(5)), "head"]
    trainer.fit()
    assert all(torch.equal(v, before[k]) for k, v in _state(body).items())


def test_resume_may_switch_checkpointing_but_not_the_decay_or_the_freezing() -> None:
    saved = load_config(None, []).to_dict()
    now = load_config(None, ["train.checkpointing=true"])
    assert resume_conflicts(saved, now) == []
    now = load_config(None, ["train.layer_decay=0.75", "model.freeze_backbone=true"])
    assert resume_conflicts(saved, now) == [
        "model.freeze_backbone: False -> True",
        "train.layer_decay: 1.0 -> 0.75",
    ]


@pytest.mark.parametrize("value", [0, 1.5])
def test_layer_decay_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"train\.layer_decay must be"):
        load_config(None, [f"train.layer_decay={value}"])
