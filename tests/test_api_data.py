"""``sanet.prepare``, ``sanet.check_data``, ``sanet.explain`` and ``sanet.figure5``: the same
files and numbers as ``sanet prepare``, ``check-data``, ``explain`` and ``figure5``; refusals raise
the typed errors and name the parameters as a Python caller spells them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanet.api.data import check_data, prepare
from sanet.api.figures import explain, figure5
from sanet.cli import main
from sanet.data import build_dataset
from sanet.data.family import draw_member
from sanet.errors import OutputExistsError, SanetError, UsageError
from test_data_prepare import _context, _voc_sbd

SMALL = {"num_images": 2, "size": 48}  # data_options of the generated scenes used here


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------------ prepare


def test_prepare_synthetic_writes_what_the_command_writes(tmp_path, capsys) -> None:
    py, cli = tmp_path / "py", tmp_path / "cli"
    options = {"num_train": 3, "num_val": 2, "size": 40, "seed": 5, "generator": "glyphs"}
    result = prepare("synthetic", out=py, **options)
    flags = ["--num-train", "3", "--num-val", "2", "--size", "40", "--seed", "5"]
    assert main(["prepare", "synthetic", "--out", str(cli), *flags, "--generator", "glyphs"]) == 0
    assert _files(py) == _files(cli) and len(_files(py)) == 1 + 2 * 5  # classes.txt, 5 pairs
    assert result.root == py and result.data == f"folder:{py}" and result.parameters is None
    # the counts, against the files on disk and the loader
    assert result.summary["train"] == len(list((py / "images/train").iterdir())) == 3
    assert result.summary["val"] == len(build_dataset("folder", py, split="val")) == 2
    printed = capsys.readouterr().out
    assert "train=3" in printed and f"train with --data folder:{cli}" in printed


def test_prepare_a_family_member_returns_its_parameters(tmp_path) -> None:
    result = prepare("synthetic", out=tmp_path / "m", num_train=1, num_val=1, size=40, family=9)
    assert result.parameters == draw_member(9).parameters()
    assert json.loads((tmp_path / "m/family.json").read_text()) == result.parameters
    assert "parameters" not in result.summary and result.summary["generator"] == "family"


def test_prepare_voc_aug_and_context_write_what_the_commands_write(tmp_path) -> None:
    sbd, voc = _voc_sbd(tmp_path / "a")
    result = prepare("voc-aug", sbd=sbd, voc=voc, out=tmp_path / "py")
    args = ["prepare", "voc-aug", "--sbd", str(sbd), "--voc", str(voc)]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    assert _files(tmp_path / "py") == _files(tmp_path / "cli")
    masks = list((tmp_path / "py/SegmentationClassAug").iterdir())
    lists = tmp_path / "py/ImageSets/Segmentation"
    assert result.summary["train_aug"] == len((lists / "train_aug.txt").read_text().split()) == 4
    assert result.summary["masks_from_voc"] + result.summary["masks_from_sbd"] == len(masks) == 6
    assert result.data == f"voc-aug:{tmp_path / 'py'}"
    assert len(build_dataset("voc-aug", result.root, split="train")) == 4

    ctx, voc2010 = _context(tmp_path / "b")
    result = prepare("pascal-context", context=ctx, voc2010=voc2010, out=tmp_path / "pc")
    args = ["prepare", "pascal-context", "--context", str(ctx), "--voc2010", str(voc2010)]
    assert main([*args, "--out", str(tmp_path / "pc-cli")]) == 0
    assert _files(tmp_path / "pc") == _files(tmp_path / "pc-cli")
    assert result.summary["masks"] == len(
        list((tmp_path / "pc/SegmentationClassContext").iterdir())
    )
    assert len(build_dataset("pascal-context", result.root, split="train")) == 2


@pytest.mark.parametrize(
    ("kind", "options", "words"),
    [
        ("voc-agu", {}, "Did you mean 'voc-aug'"),
        ("synthetic", {"num_trian": 2}, "Did you mean 'num_train'"),
        ("voc-aug", {"sbd": "x"}, "needs voc:"),
        ("pascal-context", {}, "needs context and voc2010"),
        ("synthetic", {"out": None}, "give it as out."),
    ],
)
def test_prepare_refuses_before_any_work_in_library_words(tmp_path, kind, options, words) -> None:
    options = {"out": tmp_path / "o", **options}
    with pytest.raises(UsageError, match=words) as info:
        prepare(kind, **options)
    assert "--" not in str(info.value)
    assert not (tmp_path / "o").exists()


def test_prepare_synthetic_refuses_old_scenes_naming_out(tmp_path) -> None:
    prepare("synthetic", out=tmp_path / "s", num_train=1, num_val=1, size=32)
    with pytest.raises(OutputExistsError, match="Choose an empty out,") as info:
        prepare("synthetic", out=tmp_path / "s", num_train=1, num_val=1, size=32)
    assert "--out" not in str(info.value)


# --------------------------------------------------------------------------------- check_data


@pytest.fixture
def flawed(tmp_path: Path) -> Path:
    """Three generated pairs, then one mask with a value no class has and one truncated image:
    2 errors."""
    root = tmp_path / "flawed"
    prepare("synthetic", out=root, num_train=3, num_val=1, size=32, seed=1)
    mask = np.array(Image.open(root / "masks/train/000001.png"))
    mask[0, 0] = 77
    Image.fromarray(mask).save(root / "masks/train/000001.png")
    image = root / "images/train/000002.png"
    image.write_bytes(image.read_bytes()[:60])
    return root


def test_check_data_report_is_the_commands(flawed, tmp_path) -> None:
    result = check_data(f"folder:{flawed}", out=tmp_path / "py.json", workers=1)
    assert (
        main(["check-data", "--data", f"folder:{flawed}", "--out", str(tmp_path / "c.json")]) == 1
    )
    cli = json.loads((tmp_path / "c.json").read_text())
    assert result.report == cli == json.loads(result.path.read_text())
    assert result.path == tmp_path / "py.json"
    kinds = sorted((Path(i["image"]).stem, i["kind"]) for i in cli["issues"])
    assert kinds == [("000001", "bad_labels"), ("000002", "truncated")]  # what was planted
    assert (result.errors, result.warnings, result.ok) == (2, 0, False)


def test_check_data_replaces_only_its_own_default_report(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = check_data("synthetic", split="val", data_options=SMALL)
    assert first.path == Path("check-data-synthetic-val.json") and first.ok
    assert first.report["num_pairs"] == 2 and first.report["data_options"] == SMALL
    assert check_data("synthetic", split="val", data_options=SMALL).report == first.report
    first.path.write_text("a file of the user's by that name")
    with pytest.raises(OutputExistsError, match=r"Pass overwrite=True") as info:
        check_data("synthetic", split="val", data_options=SMALL)
    assert "--" not in str(info.value) and first.path.read_text().startswith("a file")
    assert check_data("synthetic", split="val", data_options=SMALL, overwrite=True).ok


def test_check_data_refusals_and_fixes_name_parameters(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"data='vocc:x'.*Did you mean 'voc'") as info:
        check_data("vocc:x", out=tmp_path / "r.json")
    assert "--data" not in str(info.value)
    root = tmp_path / "binary"  # object masks saved as 0/255
    for folder in ("images/train", "masks/train"):
        (root / folder).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nobject\n")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(root / "masks/train/a.png")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "images/train/a.png")
    result = check_data(f"folder:{root}", out=tmp_path / "b.json")
    [issue] = result.report["issues"]
    assert issue["kind"] == "mask_0_255" and result.errors == 1
    assert "data_options={'label_map': {255: 1}}" in issue["message"]
    assert "--data-options" not in issue["message"]
    assert main(["check-data", "--data", f"folder:{root}", "--out", str(tmp_path / "c.json")]) == 1
    [issue] = json.loads((tmp_path / "c.json").read_text())["issues"]  # the command's words
    assert "--data-options '{label_map: {255: 1}}'" in issue["message"]
    fixed = check_data(
        f"folder:{root}",
        data_options={"label_map": {255: 1}},
        out=tmp_path / "b.json",
        overwrite=True,
    )
    assert fixed.ok and fixed.report["class_pixels"] == [48, 16]  # 64 pixels, 4×4 object


# ------------------------------------------------------------------------- explain, figure5


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """An untrained SANet and FCN (resnet18d) for the generated scenes' classes."""
    from sanet import build_model

    ds = build_dataset("synthetic", None, split="val", **SMALL)
    meta = {"class_names": ds.class_names, "palette": [list(c) for c in ds.palette]}
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    k = ds.num_classes
    build_model("sanet", backbone="resnet18d", num_classes=k).save_pretrained(root / "sanet", meta)
    build_model("fcn", backbone="resnet18d", num_classes=k).save_pretrained(root / "fcn", meta)
    build_model("fcn", backbone="resnet18d", num_classes=3).save_pretrained(root / "k3")
    image = root / "scene.png"
    Image.fromarray(ds.read_image(0)).save(image)
    return root


def test_explain_draws_what_the_command_draws(models, tmp_path) -> None:
    out = explain(models / "sanet", models / "scene.png", (20, 30), tmp_path / "py.png")
    assert out == tmp_path / "py.png"
    args = ["explain", "--checkpoint", str(models / "sanet"), str(models / "scene.png")]
    assert main([*args, "--point", "20,30", "--out", str(tmp_path / "cli.png")]) == 0
    assert np.array_equal(_pixels(out), _pixels(tmp_path / "cli.png"))
    with pytest.raises(UsageError, match="pass a SANet checkpoint"):
        explain(models / "fcn", models / "scene.png", (1, 1), tmp_path / "fcn.png")


@pytest.mark.parametrize(
    ("point", "error", "words"),
    [
        ((48, 0), UsageError, r"point X=48, Y=0 lies outside the 48×48 image"),
        ("20;30", UsageError, r"point must be X,Y"),
        ((1, 1), OutputExistsError, r"Pass overwrite=True"),
    ],
)
def test_explain_refusals_name_parameters(models, tmp_path, point, error, words) -> None:
    out = tmp_path / ("taken.png" if error is OutputExistsError else "new.png")
    if error is OutputExistsError:
        out.write_bytes(b"mine")
    with pytest.raises(error, match=words) as info:
        explain(models / "sanet", models / "scene.png", point, out)
    assert "--" not in str(info.value)
    assert not (tmp_path / "new.png").exists()


def test_figure5_draws_what_the_command_draws(models, tmp_path) -> None:
    out = figure5(
        models / "sanet",
        models / "fcn",
        "synthetic",
        tmp_path / "py.png",
        data_options=SMALL,
        indices=[1],
    )
    args = ["figure5", "--checkpoint", str(models / "sanet"), "--baseline", str(models / "fcn")]
    data = ["--data", "synthetic", "--data-options", json.dumps(SMALL), "--indices", "1"]
    assert main([*args, *data, "--out", str(tmp_path / "cli.png")]) == 0
    assert out == tmp_path / "py.png"
    assert np.array_equal(_pixels(out), _pixels(tmp_path / "cli.png"))


def test_figure5_refusals_name_parameters(models, tmp_path) -> None:
    refused: list[SanetError] = []
    for baseline, indices in (("fcn", [0, 2]), ("fcn", "0,x"), ("k3", [0])):
        with pytest.raises(UsageError) as info:
            figure5(
                models / "sanet",
                models / baseline,
                "synthetic",
                tmp_path / "f.png",
                data_options=SMALL,
                indices=indices,
            )
        refused.append(info.value)
    lie, numbers, classes = (str(e) for e in refused)
    assert "indices must lie in 0..1, got [0, 2]" in lie
    assert "indices must be comma-separated numbers" in numbers
    assert "predicts 3 classes" in classes and str(models / "k3") in classes
    assert not any("--" in str(e) for e in refused) and not (tmp_path / "f.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_in_library_words(models, tmp_path) -> None:
    with pytest.raises(UsageError, match=r"Use the CPU instead \(device='cpu', or train\.dev"):
        explain(models / "sanet", models / "scene.png", (1, 1), tmp_path / "x.png", device="cuda")
    assert not (tmp_path / "x.png").exists()
