"""Bad input through the CLI (docs/reliability.md): the error rule, validation before work,
batch commands that finish the good items, progress inside large images.

Each test name carries the id (``r01`` ...) that the table in docs/reliability.md cites.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sanet
from sanet.cli import main
from sanet.inference import EvalProtocol

BACKBONE = "resnet10t"  # the smallest deep-stem ResNet in timm: fast to build and run


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:60])
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny 2-class FCN saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("ckpt") / "fcn"
    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2)
    model.save_pretrained(folder, metadata={"class_names": ["bg", "fg"]})
    return folder


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    """A 2-class folder dataset, split val: four readable 48×48 pairs, one truncated image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("bg\nfg\n")
    for stem in ("a", "b", "c", "d", "e"):
        _png(root / "images/val" / f"{stem}.png", rng.integers(0, 256, (48, 48, 3), np.uint8))
        _png(root / "masks/val" / f"{stem}.png", rng.integers(0, 2, (48, 48), np.uint8))
    _truncate(root / "images/val/b.png")
    return root


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sanet "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------- A: the error rule


@pytest.mark.reliability("r12")
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import sanet.cli.data as data_cli
    from sanet.config import load_config

    def user_error(args):
        load_config(None, ["lr=1"])  # raised by sanet's own validation

    monkeypatch.setattr(data_cli, "_run_check", user_error)
    assert main(["check-data", "--data", "synthetic"]) == 2
    _one_error_line(capsys.readouterr().err, "must look like section.key=value")
    with pytest.raises(ValueError, match=r"section\.key=value"):  # -v shows the traceback
        main(["-v", "check-data", "--data", "synthetic"])
    for bug in (lambda args: {}["missing"], lambda args: np.zeros(-1)):  # KeyError; numpy's
        monkeypatch.setattr(data_cli, "_run_check", bug)  # ValueError: bugs of ours, not users'
        with pytest.raises((KeyError, ValueError)):
            main(["check-data", "--data", "synthetic"])


# --------------------------------------------------------- B: validation before the work starts


@pytest.mark.reliability("r03")
@pytest.mark.parametrize(
    "case", ["predict-out-file", "eval-out-readonly", "check-data-out-dir", "train-out-file"]
)
def test_unwritable_outputs_fail_before_the_work(
    case, ckpt, folder_data, tmp_path, monkeypatch, capsys
):
    import sanet.api.evaluation
    import sanet.data.check
    import sanet.inference.predictor

    def never(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(sanet.api.evaluation, "evaluate_pairs", never)
    monkeypatch.setattr(sanet.inference.predictor.Predictor, "predict", never)
    monkeypatch.setattr(sanet.data.check, "check_dataset", never)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    readonly = Path("/sys/sanet-no-such-folder/out")  # sysfs: no one may create folders there
    args = {
        "predict-out-file": [
            "predict",
            "--checkpoint",
            str(ckpt),
            str(folder_data / "images/val/a.png"),
            "--out",
            str(a_file),
        ],
        "eval-out-readonly": [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--data",
            f"folder:{folder_data}",
            "--out",
            str(readonly),
        ],
        "check-data-out-dir": [
            "check-data",
            "--data",
            f"folder:{folder_data}",
            "--split",
            "val",
            "--out",
            str(tmp_path),
        ],
        "train-out-file": ["train", str(tmp_path / "c.yaml"), "--out", str(a_file / "run")],
    }[case]
    (tmp_path / "c.yaml").write_text("train: {device: cpu}\n")
    if case == "eval-out-readonly" and not Path("/sys").is_dir():
        pytest.skip("needs Linux sysfs")
    assert main(args) == 2
    expected = {
        "predict-out-file": "is a file",
        "eval-out-readonly": "is not writable",
        "check-data-out-dir": "is a folder",
        "train-out-file": "is a file",
    }[case]
    _one_error_line(capsys.readouterr().err, expected)


@pytest.mark.reliability("r06")
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("case", ["predict", "eval", "train"])
def test_cuda_on_a_machine_without_it_is_one_line(case, ckpt, folder_data, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: {backbone: resnet10t}\n")
    image = str(folder_data / "images/val/a.png")
    args = {
        "predict": [
            "predict",
            "--checkpoint",
            str(ckpt),
            image,
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cuda",
        ],
        "eval": [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--data",
            f"folder:{folder_data}",
            "--split",
            "val",
            "--device",
            "cuda:1",
        ],
        "train": [
            "train",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.device=cuda",
        ],
    }[case]
    assert main(args) == 2
    _one_error_line(capsys.readouterr().err, "no CUDA device", "--device cpu")


@pytest.mark.reliability("r07")
@pytest.mark.parametrize(
    ("yaml_text", "override", "message"),
    [
        ("", "train.log_every=0", "train.log_every must be ≥ 1, got 0"),
        ("", "train.batch_size=0", "train.batch_size must be ≥ 1, got 0"),
        ("", "train.accumulate=0", "train.accumulate must be ≥ 1"),
        ("", "train.lr=0", "train.lr must be > 0"),
        ("", "data.crop_size=16", "data.crop_size must be ≥ 32"),
        ("", "data.scale_range=[2.0, 0.5]", "data.scale_range must be [low, high]"),
        ("", "train.device=gpu", "train.device must be auto, cpu"),
        ("train:\n  - lr: 0.1\n", None, "section 'train' must be a mapping"),
    ],
)
def test_config_values_out_of_range_are_named(yaml_text, override, message, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    extra = ["--set", override] if override else []
    assert main(["train", str(config), "--out", str(tmp_path / "run"), *extra]) == 2
    _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()  # refused before anything was created


@pytest.mark.reliability("r07")
def test_every_minimum_names_a_config_key() -> None:
    from sanet.config import MINIMUM, Config

    keys = {f"{s}.{k}" for s, section in Config().to_dict().items() for k in section}
    assert set(MINIMUM) <= keys


# ------------------------------------------------------ C: batch commands finish the good items


@pytest.mark.reliability("r01")
def test_predict_writes_every_readable_image_and_lists_the_rest(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    for stem in ("b", "c", "d"):
        _png(folder / f"{stem}.png", rng.integers(0, 256, (40, 52, 3), np.uint8))
    _truncate(_png(folder / "a_truncated.png", rng.integers(0, 256, (40, 52, 3), np.uint8)))
    (folder / "e_not_an_image.jpg").write_text("hello")  # sorted first and last: good ones between
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out)]) == 1
    assert sorted(p.name for p in out.glob("*.png")) == ["b.png", "c.png", "d.png"]
    err = capsys.readouterr().err
    assert "2 of 5 inputs failed (the others are done)" in err
    assert "a_truncated.png: the image is truncated" in err and "e_not_an_image.jpg" in err
    assert "split list" not in err and "Traceback" not in err


@pytest.mark.reliability("r16")
def test_eval_leaves_out_unreadable_pairs_and_says_so(ckpt, folder_data, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--data",
            f"folder:{folder_data}",
            "--split",
            "val",
            "--out",
            str(out),
            "--save-predictions",
        ]
    )
    assert rc == 1
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_images"] == 4 and len(report["failed"]) == 1
    assert "b.png" in report["failed"][0]
    saved = sorted(p.name for p in (out / "predictions").glob("*.png"))
    assert saved == ["a.png", "c.png", "d.png", "e.png"]  # named after their own images
    assert "1 of 5 inputs failed" in capsys.readouterr().err


@pytest.mark.reliability("r15")
def test_check_data_lists_every_missing_file(folder_data, tmp_path):
    for stem in ("a", "c", "d"):
        (folder_data / "masks/val" / f"{stem}.png").unlink()
    report_path = tmp_path / "report.json"
    rc = main(
        [
            "check-data",
            "--data",
            f"folder:{folder_data}",
            "--split",
            "val",
            "--out",
            str(report_path),
        ]
    )
    assert rc == 1
    report = json.loads(report_path.read_text())
    missing = sorted(Path(it["mask"]).stem for it in report["issues"] if it["kind"] == "missing")
    assert missing == ["a", "c", "d"]
    assert report["issue_counts"]["truncated"] == 1  # b.png is still found as well


# ---------------------------------------------------------------- G: feedback on large images


@pytest.mark.reliability("r10")
def test_progress_inside_a_large_image_and_a_base_size_hint(caplog) -> None:
    from sanet.api.prediction import WindowProgress
    from sanet.inference import predict_mask
    from sanet.inference.protocol import window_count

    # By hand: 2100 px wide, 256-px windows every 256 px → starts 0, 256, ..., 1792 and the
    # border-aligned 1844 = 9 columns; 40 px high → 1 row. Mirrors double it.
    proto = EvalProtocol(crop_size=256, stride=256)
    assert window_count(40, 2100, proto) == 9
    assert window_count(40, 2100, EvalProtocol(crop_size=256, stride=256, flip=True)) == 18
    # 4000×3000 under the paper's 480/320 windows: rows start 0, 320, ..., 2240 and 2520 (9),
    # columns 0, 320, ..., 3200 and 3520 (12)
    assert window_count(3000, 4000, EvalProtocol()) == 9 * 12

    class Bar:  # records what the progress display is told
        def __init__(self) -> None:
            self.done, self.console = 0, type("C", (), {"print": lambda _, t: print(t)})()

        def add_task(self, name: str, total: int, **fields) -> int:
            self.total = total
            return 1

        def advance(self, task: int, n: int) -> None:
            self.done += n

        def remove_task(self, task: int) -> None:
            pass

    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2).eval()
    bar, image = Bar(), torch.randn(3, 40, 2100)
    with WindowProgress(bar, model, proto).image(Path("wide.png"), 40, 2100):
        predict_mask(model, image, proto)
    assert bar.total == bar.done == 9  # every window counted once, by the model's own calls
    hint = caplog.text  # from Python the hint names the argument (the CLI: --base-size 1024)
    assert "wide.png is 2100×40 px" in hint and "base_size=1024" in hint
    assert "(4 windows)" in hint  # 1024 × 20 px: starts 0, 256, 512 and the border-aligned 768
