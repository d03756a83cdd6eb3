"""Model contract tests. Each architecture is a short subclass of one shared test class."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import sanet
from _vit_tiny import TINY_VIT
from conftest import TINY_BACKBONE
from sanet.models import Backbone, SegmentationModel

K = 5


class ModelContract:
    name: str
    has_aux: bool  # whether train mode adds "mask" and "cat"
    backbone: str = TINY_BACKBONE

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> SegmentationModel:
        torch.manual_seed(0)
        return sanet.build_model(cls.name, backbone=cls.backbone, num_classes=K)

    @pytest.mark.parametrize(("batch", "size"), [(1, (45, 45)), (3, (65, 97)), (1, (32, 33))])
    def test_eval_output_keeps_input_size(self, model, batch, size) -> None:
        with torch.no_grad():
            out = model.eval()(torch.randn(batch, 3, *size))
        assert set(out) == {"out"}
        assert out["out"].shape == (batch, K, *size)

    def test_train_outputs(self, model) -> None:
        out = model.train()(torch.randn(3, 3, 65, 97))
        expected = {"out", "mask", "cat"} if self.has_aux else {"out"}
        assert set(out) == expected
        assert out["out"].shape == (3, K, 65, 97)
        if self.has_aux:
            assert out["mask"].shape == (3, K, 65, 97) and out["cat"].shape == (3, K)
        terms = sanet.SANetLoss()(out, torch.randint(0, K, (3, 65, 97)))
        terms["loss"].backward()
        assert all(p.grad is not None for p in model.head.parameters())
        model.zero_grad()

    def test_too_small_input_is_a_clear_error(self, model) -> None:
        with pytest.raises(ValueError, match="≥ 32"):
            model.eval()(torch.randn(1, 3, 31, 64))

    def test_save_and_load_round_trip_is_bit_exact(self, model, tmp_path: Path) -> None:
        model.eval()
        x = torch.randn(2, 3, 45, 61)
        model.save_pretrained(tmp_path, metadata={"class_names": list("abcde")})
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["README.md", "config.json", "model.safetensors"]  # README: the card
        loaded = SegmentationModel.from_pretrained(tmp_path)
        assert type(loaded) is type(model) and loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded(x)["out"], model(x)["out"])


class TestSANet(ModelContract):
    name, has_aux = "sanet", True

    def test_attention_parts(self, model) -> None:
        parts = model.eval().attention_parts(torch.randn(1, 3, 64, 80))
        assert [a.shape[1] for a, _ in parts] == [c // 4 for c in model.backbone.channels]
        assert [tuple(a.shape) == tuple(m.shape) for a, m in parts] == [True] * 4
        assert parts[0][0].shape[-2:] == (16, 20) and parts[3][0].shape[-2:] == (8, 10)

    def test_options_survive_save_and_load(self, tmp_path: Path) -> None:
        options = dict(attn_act="sigmoid", attn_combine="residual", head_init="kaiming")
        model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=K, **options)
        model.save_pretrained(tmp_path)
        loaded = SegmentationModel.from_pretrained(tmp_path)
        assert {k: loaded.config[k] for k in options} == options
        assert all(h.combine == "residual" and h.attn_act == "sigmoid" for h in loaded.head.heads)

    def test_kaiming_head_init(self) -> None:
        model = sanet.build_model(
            "sanet", backbone=TINY_BACKBONE, num_classes=K, head_init="kaiming"
        )
        mask = model.head.mask.weight.detach()  # N(0, 0.01): every class starts equally likely
        assert abs(float(mask.std()) - 0.01) < 0.002 and not model.head.mask.bias.any()
        # kaiming_normal_(fan_out): std = √(2 / (C_out·3·3))
        conv = model.head.fuse[0].weight.detach()
        expected = (2 / (conv.shape[0] * 9)) ** 0.5
        assert abs(float(conv.std()) / expected - 1) < 0.05
        with pytest.raises(ValueError, match="head_init"):
            sanet.build_model("fcn", backbone=TINY_BACKBONE, num_classes=K, head_init="xavier")

    def test_from_pretrained_on_wrong_class(self, tmp_path: Path) -> None:
        sanet.build_model("fcn", backbone=TINY_BACKBONE, num_classes=K).save_pretrained(tmp_path)
        with pytest.raises(TypeError, match="holds a 'fcn' model"):
            sanet.SANet.from_pretrained(tmp_path)


class TestSANetSE(ModelContract):
    name, has_aux = "sanet_se", True


class TestFCN(ModelContract):
    name, has_aux = "fcn", False


class TestSANetViT(ModelContract):
    """A ViT backbone (a tiny DINOv2-shaped one) under the four SA heads: any size ≥ 32."""

    name, has_aux, backbone = "sanet", True, TINY_VIT


class TestFCNViT(ModelContract):
    name, has_aux, backbone = "fcn", False, TINY_VIT


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sanet", "gate attn_act upsample attn_combine fuse_channels dropout head_init"),
        ("sanet_se", "gate fuse_channels dropout head_init"),  # no SA blocks: no SA options
        ("fcn", "dropout head_init"),
    ],
)
def test_each_model_stores_exactly_the_options_it_has(name: str, options: str) -> None:
    model = sanet.build_model(name, backbone=TINY_BACKBONE, num_classes=K)
    stored = set(model.config) - {"num_classes", "backbone", "output_stride"}
    assert stored == set(options.split())
    with pytest.raises(ValueError, match=f"{name!r} has no option 'colour'"):
        sanet.build_model(name, backbone=TINY_BACKBONE, num_classes=K, colour="red")


def test_dense_gating_is_logsigmoid_of_cat() -> None:
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=K).eval()
    out = model.head(model.backbone(torch.randn(2, 3, 64, 64)))
    gated = out["mask"] + torch.nn.functional.logsigmoid(out["cat"])[..., None, None]
    torch.testing.assert_close(out["dense"], gated)
    # softmax of D equals softmax(M)·σ(c), renormalised: the class-presence gate of Fig. 3
    p = torch.softmax(out["mask"], 1) * torch.sigmoid(out["cat"])[..., None, None]
    torch.testing.assert_close(torch.softmax(out["dense"], 1), p / p.sum(1, keepdim=True))


@pytest.mark.parametrize(("name", "params_m"), [("resnet50s", 23.63), ("resnet101s", 42.62)])
def test_preset_backbone_parameter_counts(name: str, params_m: float) -> None:
    backbone = Backbone(name, output_stride=8)
    count = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert count == pytest.approx(params_m, abs=0.01)
    assert backbone.channels == [256, 512, 1024, 2048]
    assert backbone.reductions == [4, 8, 8, 8]


def test_output_stride_16() -> None:
    backbone = Backbone(TINY_BACKBONE, output_stride=16)
    assert backbone.reductions == [4, 8, 16, 16]
    feats = backbone(torch.randn(1, 3, 65, 97))
    assert [tuple(f.shape[-2:]) for f in feats] == [(17, 25), (9, 13), (5, 7), (5, 7)]


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'sanet'"):
        sanet.build_model("sanett")
    with pytest.raises(ValueError, match="Did you mean 'resnet50s'"):
        sanet.build_model("sanet", backbone="resnet50ss")
    with pytest.raises(ValueError, match="output_stride"):
        sanet.build_model("sanet", backbone=TINY_BACKBONE, output_stride=4)
    assert sanet.list_models() == ["fcn", "sanet", "sanet_se"]


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_backbone_from_local_file_gets_exactly_its_tensors(tmp_path: Path, fmt: str) -> None:
    # A classification checkpoint as users download it: with fc.* keys, maybe wrapped.
    torch.manual_seed(3)
    classifier = timm.create_model(TINY_BACKBONE, pretrained=False)
    state = {k: v.clone() for k, v in classifier.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = sanet.build_model(
        "sanet", backbone=TINY_BACKBONE, num_classes=K, pretrained_backbone=str(path)
    )
    loaded = model.backbone.body.state_dict()
    assert len(loaded) == len([k for k in state if not k.startswith("fc.")])
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_backbone_file_for_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"lack .* tensors|wrong shape"):
        Backbone(TINY_BACKBONE, pretrained=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Backbone(TINY_BACKBONE, pretrained=tmp_path / "missing.pth")


def test_efficientnet_b7_preset_builds_and_runs() -> None:
    model = sanet.build_model("sanet", backbone="tf_efficientnet_b7", num_classes=K).eval()
    assert model.backbone.channels == [48, 80, 224, 640]
    assert model.backbone.reductions == [4, 8, 8, 8]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97))["out"].shape == (1, K, 65, 97)
