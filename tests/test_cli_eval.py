"""`sanet eval`, `sanet predict`, `sanet explain`, `sanet figure5` end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sanet.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny SANet and FCN for the synthetic dataset, saved with metadata."""
    from sanet import build_model
    from sanet.data import build_dataset

    ds = build_dataset("synthetic", None, split="val", num_images=2)
    meta = {"class_names": ds.class_names, "palette": [list(c) for c in ds.palette]}
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    k = ds.num_classes
    build_model("sanet", backbone="resnet18d", num_classes=k).save_pretrained(root / "sanet", meta)
    build_model("fcn", backbone="resnet18d", num_classes=k).save_pretrained(root / "fcn", meta)
    build_model("sanet", backbone="resnet18d", num_classes=3).save_pretrained(root / "k3")
    return root


def test_eval_writes_metrics_with_protocol_and_plots(ckpts, tmp_path):
    out = tmp_path / "ev"
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(ckpts / "sanet"),
            "--data",
            "synthetic",
            "--limit",
            "1",
            "--ms-flip",
            "--scales",
            "0.75,1.0",
            "--base-size",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    proto = report["protocol"]
    assert proto["scales"] == [0.75, 1.0] and proto["flip"] is True
    assert (proto["base_size"], proto["crop_size"], proto["stride"]) == (64, 480, 320)
    k = len(report["class_names"])
    assert list(report["IoU"]) == report["class_names"] and len(report["confusion_matrix"]) == k
    assert "present in the prediction or the ground truth" in report["convention"]
    assert report["num_images"] == 1
    for name in ("iou_per_class.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0
    # the numbers equal a ConfusionMatrix fed by the Python API under the same protocol
    from sanet.data import build_dataset
    from sanet.inference import EvalProtocol, Predictor
    from sanet.metrics import ConfusionMatrix

    pred = Predictor(ckpts / "sanet", protocol=EvalProtocol((0.75, 1.0), True, 64))
    cm = ConfusionMatrix(k)
    ds = build_dataset("synthetic", None, split="val")
    image, mask = ds[0]
    cm.update(torch.from_numpy(pred.predict(image))[None], mask[None])
    assert report["mIoU"] == pytest.approx(cm.compute()["mIoU"])
    assert report["pixAcc"] == pytest.approx(cm.compute()["pixAcc"])


def test_eval_single_scale_protocol_and_class_mismatch(ckpts, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(ckpts / "sanet"),
            "--data",
            "synthetic",
            "--limit",
            "1",
            "--out",
            str(tmp_path),
            "--save-predictions",
        ]
    )
    assert rc == 0
    from sanet.data import build_dataset

    h, w = build_dataset("synthetic", None, split="val")[0][1].shape
    with Image.open(tmp_path / "predictions" / "00000.png") as saved:
        assert saved.mode == "P" and saved.size == (w, h)  # the mask's own size
    proto = json.loads((tmp_path / "metrics.json").read_text())["protocol"]
    assert proto["scales"] == [1.0] and proto["flip"] is False and proto["base_size"] is None
    rc = main(["eval", "--checkpoint", str(ckpts / "k3"), "--data", "synthetic", "--limit", "1"])
    assert rc == 2
    assert "predicts 3 classes but the dataset has" in capsys.readouterr().err


@pytest.fixture
def odd_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"a.jpg": (45, 45), "b.png": (65, 97), "c.jpeg": (33, 70)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder, sizes


def test_predict_folder_and_glob_keep_names_and_sizes(ckpts, odd_images, tmp_path):
    folder, sizes = odd_images
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(ckpts / "sanet"),
            str(folder / "a.jpg"),
            str(folder / "*.png"),
            str(folder),
            "--out",
            str(out),
            "--overlay",
        ]
    )
    assert rc == 0
    for name, (h, w) in sizes.items():
        stem = name.split(".")[0]
        with Image.open(out / f"{stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (w, h)
            assert np.asarray(mask).max() < 10
            assert mask.getpalette()[3:6] == [128, 0, 0]  # the synthetic palette's class 1
        with Image.open(out / "overlays" / f"{stem}.png") as ov:
            assert ov.mode == "RGB" and ov.size == (w, h)
    assert not (out / "notes.png").exists()


def test_predict_refuses_to_overwrite_inputs(ckpts, odd_images, capsys):
    folder, _ = odd_images
    before = (folder / "b.png").read_bytes()
    rc = main(["predict", "--checkpoint", str(ckpts / "sanet"), str(folder), "--out", str(folder)])
    assert rc == 2
    assert "Refusing to overwrite" in capsys.readouterr().err
    assert (folder / "b.png").read_bytes() == before
    assert not (folder / "a.png").exists()  # nothing was written before the check
    rc = main(
        ["predict", "--checkpoint", str(ckpts / "sanet"), str(folder / "*.gif"), "--out", "x"]
    )
    assert rc == 2


def test_explain_and_figure5_write_pngs(ckpts, odd_images, tmp_path, capsys):
    folder, _ = odd_images
    fig6 = tmp_path / "fig6.png"
    args = ["explain", "--checkpoint", str(ckpts / "sanet"), str(folder / "b.png")]
    assert main([*args, "--point", "40,30", "--out", str(fig6)]) == 0
    assert Image.open(fig6).format == "PNG"
    assert main([*args, "--point", "97,10", "--out", str(fig6), "--overwrite"]) == 2
    assert "outside" in capsys.readouterr().err
    fig5 = tmp_path / "fig5.png"
    rc = main(
        [
            "figure5",
            "--checkpoint",
            str(ckpts / "sanet"),
            "--baseline",
            str(ckpts / "fcn"),
            "--data",
            "synthetic",
            "--indices",
            "1",
            "--out",
            str(fig5),
        ]
    )
    assert rc == 0 and Image.open(fig5).format == "PNG"


def _protocol(*argv: str):
    from sanet.cli import build_parser
    from sanet.cli.common import protocol_from_args

    return protocol_from_args(build_parser().parse_args(["predict", *argv, "x.png", "--out", "o"]))


def test_every_eval_key_of_the_run_sets_the_protocol(ckpts, tmp_path):
    """Unset flags take the run's eval section (SPEC §4: scales, flip, crop_size, stride) and its
    data.base_size; --ms-flip is the paper's protocol; --single-scale is training's validation."""
    import shutil

    from sanet.inference import PAPER_SCALES

    run = tmp_path / "run"
    shutil.copytree(ckpts / "sanet", run / "model")
    (run / "config.yaml").write_text(
        "data: {base_size: 128}\neval: {scales: [0.75, 1.25], flip: true, crop_size: 96, stride: 64}\n"
    )
    (run / "checkpoints").mkdir()
    (run / "checkpoints/best.pt").touch()  # a file inside the run finds the same config
    for where in (run, run / "model", run / "checkpoints/best.pt"):
        p = _protocol("--checkpoint", str(where))
        assert (p.scales, p.flip, p.base_size, p.crop_size, p.stride) == (
            (0.75, 1.25),
            True,
            128,
            96,
            64,
        ), where
    p = _protocol("--checkpoint", str(run), "--ms-flip")
    assert (p.scales, p.flip, p.base_size, p.crop_size) == (PAPER_SCALES, True, 128, 96)
    assert p.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the paper's scales, written out
    p = _protocol("--checkpoint", str(run), "--single-scale")
    assert (p.scales, p.flip, p.base_size, p.crop_size) == ((1.0,), False, None, 96)
    p = _protocol("--checkpoint", str(run), "--no-flip", "--scales", "1", "--stride", "50")
    assert (p.scales, p.flip, p.base_size, p.stride) == ((1.0,), False, None, 50)
    p = _protocol("--checkpoint", str(run), "--scales", "0.5", "--base-size", "200")
    assert (p.scales, p.flip, p.base_size) == ((0.5,), True, 200)
    # a model saved outside a run: EvalConfig's defaults (single scale, 480 / 320); the paper's
    # base size 520 once the scales need one
    p = _protocol("--checkpoint", str(ckpts / "sanet"))
    assert (p.scales, p.flip, p.base_size, p.crop_size, p.stride) == ((1.0,), False, None, 480, 320)
    assert _protocol("--checkpoint", str(ckpts / "sanet"), "--ms-flip").base_size == 520
    # a recipe that trained at each image's own size (data.base_size 0) scales images, not a side
    (tmp_path / "own").mkdir()
    (tmp_path / "own/config.yaml").write_text("data: {base_size: 0}\n")
    assert _protocol("--checkpoint", str(tmp_path / "own"), "--ms-flip").base_size is None
    with pytest.raises(ValueError, match="contradicts --single-scale"):
        _protocol("--checkpoint", str(run), "--single-scale", "--scales", "0.5")
    with pytest.raises(SystemExit):  # argparse: not allowed with
        _protocol("--checkpoint", str(run), "--single-scale", "--ms-flip")


def test_eval_of_a_run_uses_its_eval_section(ckpts, tmp_path):
    import shutil

    run, out = tmp_path / "run", tmp_path / "ev"
    shutil.copytree(ckpts / "sanet", run / "model")
    (run / "config.yaml").write_text(
        "data: {base_size: 48}\neval: {scales: [0.75, 1.0], flip: true, crop_size: 40, stride: 24}\n"
    )
    args = ["eval", "--checkpoint", str(run), "--data", "synthetic", "--limit", "1"]
    assert main([*args, "--out", str(out)]) == 0
    proto = json.loads((out / "metrics.json").read_text())["protocol"]
    assert proto["mode"] == "multi-scale+flip" and proto["scales"] == [0.75, 1.0]
    assert (proto["flip"], proto["base_size"], proto["crop_size"], proto["stride"]) == (
        True,
        48,
        40,
        24,
    )
    assert main([*args, "--single-scale", "--out", str(out), "--overwrite"]) == 0
    proto = json.loads((out / "metrics.json").read_text())["protocol"]
    assert proto["mode"] == "single-scale" and (proto["flip"], proto["base_size"]) == (False, None)


@pytest.mark.slow
def test_sweep_trains_a_grid_and_draws_fig4(tmp_path):
    out = tmp_path / "sweep"
    rc = main(
        [
            "sweep",
            "--alphas",
            "0.2",
            "--betas",
            "0.6,0.8",
            "--out",
            str(out),
            "--set",
            "train.max_steps=1",
            "train.epochs=1",
            "train.batch_size=2",
            "train.val_every=0",
            "data.base_size=48",
            "data.crop_size=48",
            "data.options={num_images: 2, size: 48}",
            "eval.crop_size=48",
            "eval.stride=32",
        ]
    )
    assert rc == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [(r["alpha"], r["beta"]) for r in report["runs"]] == [(0.2, 0.6), (0.2, 0.8)]
    assert all(0.0 <= r["mIoU"] <= 1.0 for r in report["runs"])
    assert "beta: 0.8" in (out / "alpha0.2_beta0.8" / "config.yaml").read_text()
    assert Image.open(out / "fig4.png").format == "PNG"
