"""ViT backbones under SANet's heads (sanet.models.vit): the feature pyramid's geometry, padding
and cropping, position embeddings, local weights, and the bad inputs (one line each, with the
fix). Most tests use a tiny DINOv2-shaped ViT (tests/_vit_tiny.py); the real families run at
56-70 px, the larger ones marked slow. Training switches: tests/test_vit_training.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import sanet
from _vit_tiny import TINY_VIT, TINY_VIT_REG
from sanet.config import load_config
from sanet.errors import ConfigError, UsageError
from sanet.models import Backbone
from sanet.models.vit import block_indices, is_vit, vit_patch_size

K = 3


@pytest.mark.parametrize(
    ("output_stride", "channels", "reductions", "sizes"),
    [  # 65×97 padded to 70×98: a 5×7 patch grid; each map ⌈65/r⌉ × ⌈97/r⌉
        (8, [16, 32, 32, 32], [3.5, 7, 7, 7], [(19, 28), (10, 14), (10, 14), (10, 14)]),
        (16, [16, 32, 64, 64], [3.5, 7, 14, 14], [(19, 28), (10, 14), (5, 7), (5, 7)]),
        (32, [16, 32, 64, 64], [3.5, 7, 14, 28], [(19, 28), (10, 14), (5, 7), (3, 4)]),
    ],
)
def test_pyramid_channels_strides_and_sizes(output_stride, channels, reductions, sizes) -> None:
    backbone = Backbone(TINY_VIT, output_stride=output_stride)
    assert backbone.channels == channels and backbone.reductions == reductions
    assert backbone.patch_size == 14
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 65, 97))
    assert [tuple(f.shape[-2:]) for f in feats] == sizes
    assert [f.shape[1] for f in feats] == channels
    assert sizes == [(math.ceil(65 / r), math.ceil(97 / r)) for r in reductions]


def test_four_evenly_spaced_blocks() -> None:
    assert block_indices(12) == [2, 5, 8, 11]  # DPT's hooks on ViT-B
    assert block_indices(24) == [5, 11, 17, 23]
    assert block_indices(4) == [0, 1, 2, 3]


def test_padding_to_the_patch_and_cropping_back_equal_a_hand_padded_image() -> None:
    """The image is padded with zeros to 70×98 and each map keeps the positions over the image:
    the same as running the padded image and cutting each map to ⌈65/r⌉ × ⌈97/r⌉ by hand."""
    backbone = Backbone(TINY_VIT, output_stride=32).eval()
    x = torch.randn(1, 3, 65, 97)
    padded = torch.zeros(1, 3, 70, 98)
    padded[..., :65, :97] = x
    with torch.no_grad():
        got, whole = backbone(x), backbone(padded)
    assert [tuple(f.shape[-2:]) for f in whole] == [(20, 28), (10, 14), (5, 7), (3, 4)]
    for f, g, r in zip(got, whole, [3.5, 7, 14, 28], strict=True):
        rows, cols = math.ceil(65 / r), math.ceil(97 / r)
        torch.testing.assert_close(f, g[..., :rows, :cols], rtol=0, atol=0)


def test_position_embeddings_follow_the_input_grid() -> None:
    """At 84×112 (a 6×8 grid; the ViT was built for 4×4) the blocks equal those of a fixed-size
    timm ViT of that grid whose position embeddings were resized by hand (bicubic)."""
    backbone = Backbone(TINY_VIT).eval()
    body = backbone.body
    fixed = timm.create_model(TINY_VIT, img_size=(84, 112)).eval()
    state = {k: v for k, v in body.state_dict().items()}
    grid = state["pos_embed"][:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 8), mode="bicubic", antialias=True)
    state["pos_embed"] = torch.cat(
        [state["pos_embed"][:, :1], resized.permute(0, 2, 3, 1).reshape(1, 48, -1)], dim=1
    )
    fixed.load_state_dict(state, strict=False)  # its head and final norm are not compared
    x = torch.randn(1, 3, 84, 112)
    with torch.no_grad():
        want = fixed.forward_intermediates(x, indices=4, intermediates_only=True)
        got = body.forward_intermediates(x, indices=4, intermediates_only=True)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_register_tokens_are_left_out_of_the_maps() -> None:
    model = sanet.build_model("sanet", backbone=TINY_VIT_REG, num_classes=K).eval()
    assert model.backbone.body.num_prefix_tokens == 3  # class token + 2 registers
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 56, 70))
        out = model(torch.randn(1, 3, 56, 70))["out"]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 20), (8, 10), (8, 10), (8, 10)]
    assert out.shape == (1, K, 56, 70)


FAMILIES = [  # (timm name, its embed_dim)
    pytest.param("vit_small_patch14_dinov2", 384, id="dinov2-s"),
    pytest.param("vit_small_patch14_reg4_dinov2", 384, id="dinov2-s-reg4", marks=pytest.mark.slow),
    pytest.param("vit_base_patch14_dinov2", 768, id="dinov2-b", marks=pytest.mark.slow),
    pytest.param("vit_base_patch14_reg4_dinov2", 768, id="dinov2-b-reg4", marks=pytest.mark.slow),
    pytest.param("vit_large_patch14_dinov2", 1024, id="dinov2-l", marks=pytest.mark.slow),
    pytest.param("vit_large_patch14_reg4_dinov2", 1024, id="dinov2-l-reg", marks=pytest.mark.slow),
    pytest.param("deit3_small_patch16_224", 384, id="deit3-s", marks=pytest.mark.slow),
    pytest.param("eva02_tiny_patch14_224", 192, id="eva02-t"),
    pytest.param("eva02_base_patch14_224", 768, id="eva02-b", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "dim"), FAMILIES)
def test_timm_vit_families_under_the_sa_heads(name: str, dim: int) -> None:
    assert is_vit(name)
    model = sanet.build_model("sanet", backbone=name, num_classes=K).eval()
    assert model.backbone.channels == [dim // 4, dim // 2, dim // 2, dim // 2]
    patch = vit_patch_size(name)
    assert model.backbone.reductions == [patch / 4, patch / 2, patch / 2, patch / 2]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 56, 70))["out"]
    assert out.shape == (1, K, 56, 70) and torch.isfinite(out).all()


def test_fcn_and_se_heads_take_the_pyramid_too() -> None:
    x = torch.randn(1, 3, 45, 61)
    for name in ("fcn", "sanet_se"):
        model = sanet.build_model(name, backbone=TINY_VIT, num_classes=K).eval()
        with torch.no_grad():
            assert model(x)["out"].shape == (1, K, 45, 61)


# ---------------------------------------------------------------------------------------------
# Local weights (no download)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of timm to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    monkeypatch.setattr(timm.models._builder, "load_custom_pretrained", refuse)


def test_local_timm_checkpoint_loads_every_tensor(tmp_path: Path, no_download) -> None:
    """A whole timm model's file (classifier head and final norm included, as timm saves it):
    every tensor the backbone keeps comes from the file; the rest is ignored."""
    torch.manual_seed(5)
    full = timm.create_model(TINY_VIT, num_classes=10)
    state = {k: v.clone() for k, v in full.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    model = sanet.build_model("sanet", backbone=TINY_VIT, num_classes=K, pretrained_backbone=path)
    loaded = model.backbone.body.state_dict()
    dropped = {k for k in state if k.startswith(("head.", "norm.", "fc_norm."))}
    assert dropped and set(loaded) == set(state) - dropped
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, naming the fix


def test_a_timm_model_that_is_neither_cnn_nor_vit_names_both_kinds() -> None:
    with pytest.raises(UsageError) as err:
        sanet.build_model("sanet", backbone="mixer_s32_224", num_classes=K)
    text = str(err.value)
    assert "\n" not in text
    assert "neither a timm CNN" in text and "nor a ViT" in text
    assert "Fix: pick a CNN such as resnet50s" in text and "vit_small_patch14_dinov2" in text


@pytest.mark.parametrize(
    ("key", "size", "fix"),
    [
        ("data.crop_size", 96, "Fix: data.crop_size=84 or 98"),
        ("eval.crop_size", 480, "Fix: eval.crop_size=476 or 490"),
    ],
)
def test_a_window_the_patch_does_not_divide_is_refused(key: str, size: int, fix: str) -> None:
    fine = {"data.crop_size": 112, "eval.crop_size": 112}
    overrides = [f"model.backbone={TINY_VIT}", *(f"{k}={v}" for k, v in fine.items())]
    load_config(None, overrides)  # multiples of 14: accepted
    with pytest.raises(ConfigError) as err:
        load_config(None, [*overrides, f"{key}={size}"])
    text = str(err.value)
    assert "\n" not in text and f"{key}={size} is not a multiple of the patch size 14" in text
    assert text.endswith(fix + ".")
    load_config(None, [f"{key}={size}"])  # a CNN has no patch: any window


def test_weights_of_another_architecture_are_refused_with_the_fix(tmp_path: Path) -> None:
    cnn = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(cnn))
    wider = tmp_path / "wider.safetensors"
    save_file(timm.create_model(TINY_VIT, embed_dim=96, num_heads=2).state_dict(), str(wider))
    for path, what in ((cnn, "another architecture"), (wider, "another size")):
        with pytest.raises(UsageError) as err:
            Backbone(TINY_VIT, pretrained=path)
        text = str(err.value)
        assert "\n" not in text and what in text
        assert f"Fix: pass the weights of {TINY_VIT!r}" in text


def test_fig6_attention_maps_read_the_sa_heads_on_the_pyramid() -> None:
    """Fig. 6 on ViT features: each SA head's parts lie on its pyramid stage's grid (⌈65/r⌉ ×
    ⌈97/r⌉), and the cosine-similarity maps come back at the image size, in [-1, 1], as the
    cosine similarity to the chosen pixel's cell (row 30·19//65 = 8, column 50·28//97 = 14 of
    head 1) computed by hand."""
    from sanet.viz.figures import attention_maps

    model = sanet.build_model("sanet", backbone=TINY_VIT, num_classes=K).eval()
    x = torch.randn(3, 65, 97)
    with torch.no_grad():
        parts = model.attention_parts(x[None])
    assert [tuple(a.shape[-2:]) for a, _ in parts] == [(19, 28), (10, 14), (10, 14), (10, 14)]
    attn = F.normalize(parts[0][0][0].flatten(1), dim=0)  # (C, h·w), unit columns
    sim = (attn.T @ attn[:, 8 * 28 + 14]).reshape(1, 1, 19, 28)  # cosine to the chosen cell
    want = F.interpolate(sim, size=(65, 97), mode="bilinear", align_corners=False)[0, 0]
    maps = attention_maps(model, x, (50, 30))
    assert set(maps) == {(1, "attention"), (1, "main"), (4, "attention"), (4, "main")}
    np.testing.assert_allclose(maps[(1, "attention")], want.numpy(), atol=1e-5)
    for m in maps.values():
        assert m.shape == (65, 97) and m.min() >= -1 - 1e-5 and m.max() <= 1 + 1e-5
