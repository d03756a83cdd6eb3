"""Outputs, flags and advice of the newer commands (docs/reliability.md, r26–r29, r31–r33):
``compare --out`` refuses a folder it did not fill, no command replaces a file silently,
``bench`` and ``export`` check every flag before any work, a finished run's advice names the
key that ended it, a command that fails before writing leaves no folder, and the messages
read correctly.

Each test name carries the id (``r26`` ...) that the table in docs/reliability.md cites.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sanet
from conftest import tiny_recipe
from sanet.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "sanet"
TINY = tiny_recipe(
    model__pretrained_backbone=False,
    train__epochs=None,  # the default recipe's: each test sets its own budget
    train__log_every=1,
    eval__crop_size=32,
    eval__stride=32,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny 2-class FCN saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("ckpt") / "fcn"
    sanet.build_model("fcn", backbone="resnet10t", num_classes=2).save_pretrained(
        folder, metadata={"class_names": ["bg", "fg"]}
    )
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A 2-class folder dataset with two 40×40 val pairs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for sub, make in (
        ("images", lambda: rng.integers(0, 256, (40, 40, 3), np.uint8)),
        ("masks", lambda: rng.integers(0, 2, (40, 40), np.uint8)),
    ):
        (root / sub / "val").mkdir(parents=True)
        for stem in "ab":
            Image.fromarray(make()).save(root / sub / "val" / f"{stem}.png")
    (root / "classes.txt").write_text("bg\nfg\n")
    return root


def _one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("sanet ") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _never(*args, **kwargs):
    raise AssertionError("the work started before the flags were checked")


# ----------------------------------------------------------------------- r26: compare --out


@pytest.mark.reliability("r26")
@pytest.mark.parametrize("case", ["users-compare-json", "other-files", "out-is-a-file"])
def test_compare_refuses_an_out_it_did_not_fill(case, tmp_path, monkeypatch, capsys) -> None:
    import sanet.experiments.compare as compare

    monkeypatch.setattr(compare, "run_all", _never)
    out = tmp_path / "cmp"
    if case == "out-is-a-file":
        out.write_text("mine")
        needle = "is a file, not a folder"
    else:
        out.mkdir()
        mine = {"compare.json": '{"my": "results"}', "compare.png": "mine"}
        if case == "other-files":
            mine = {"notes.txt": "mine", "runs": None}
        for name, text in mine.items():
            (out / name).mkdir() if text is None else (out / name).write_text(text)
        if case == "other-files":
            (out / "runs" / "draft.txt").write_text("mine")
        needle = (
            "(compare.json, compare.png)"
            if case == "users-compare-json"
            else "(notes.txt, runs/draft.txt)"
        )
    before = (
        sorted((p.name, p.read_bytes()) for p in out.rglob("*") if p.is_file())
        if out.is_dir()
        else None
    )
    args = ["compare", "demo", "--models", "fcn", "--seeds", "1", "--out", str(out)]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, needle)
    if before is not None:
        assert sorted((p.name, p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


# -------------------------------------------------------- r28: outputs never replaced silently

REPLACED = [
    "export",
    "check-data",
    "explain",
    "figure5",
    "bench-json",
    "bench-profile",
    "eval",
    "predict",
    "train",
    "sweep",
]


@pytest.mark.reliability("r28")
@pytest.mark.parametrize("command", REPLACED)
def test_no_command_replaces_a_file_silently(
    command, ckpt, data, tmp_path, monkeypatch, capsys
) -> None:
    import sanet.experiments.bench
    import sanet.experiments.sweep
    import sanet.models.registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sanet.models.registry, "load_model", _never)
    monkeypatch.setattr(sanet.experiments.bench.Peer, "build", _never)
    monkeypatch.setattr(sanet.experiments.sweep, "sweep_loss_weights", _never)
    image = str(data / "images/val/a.png")
    mine = tmp_path / {"export": "m.onnx", "eval": "ev/metrics.json", "predict": "pr/a.png"}.get(
        command, "mine.png" if command in ("explain", "figure5") else "mine.json"
    )
    if command == "train":
        mine = tmp_path / "config.yaml"  # `sanet train config.yaml --out .`: the recipe itself
    elif command == "sweep":
        mine = tmp_path / "sw" / "notes.txt"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("model: {name: fcn}\n")
    args = {
        "export": ["export", "--checkpoint", str(ckpt), "--out", str(mine)],
        "check-data": [
            "check-data",
            "--data",
            f"folder:{data}",
            "--split",
            "val",
            "--out",
            str(mine),
        ],
        "explain": [
            "explain",
            "--checkpoint",
            str(ckpt),
            image,
            "--point",
            "1,1",
            "--out",
            str(mine),
        ],
        "figure5": [
            *("figure5", "--checkpoint", str(ckpt), "--baseline", str(ckpt)),
            *("--data", f"folder:{data}", "--out", str(mine)),
        ],
        "bench-json": ["bench", "--models", "fcn:resnet10t", "--json", str(mine)],
        "bench-profile": ["bench", "--models", "fcn:resnet10t", "--profile", str(mine)],
        "eval": ["eval", "--checkpoint", str(ckpt), "--data", f"folder:{data}", "--out", "ev"],
        "predict": ["predict", "--checkpoint", str(ckpt), image, "--out", "pr"],
        "train": ["train", str(mine), "--out", ".", "--set", *TINY],
        "sweep": ["sweep", "--out", "sw", "--alphas", "0.2", "--betas", "0.2"],
    }[command]
    assert main(args) == 2
    needle = "did not write" if command in ("train", "sweep") else "--overwrite"
    _one_line(capsys.readouterr().err, mine.name, needle)
    assert mine.read_text() == "model: {name: fcn}\n"


@pytest.mark.reliability("r28")
def test_overwrite_replaces_and_check_data_replaces_its_own_report(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.json"
    mine.write_text("mine")
    args = ["check-data", "--data", f"folder:{data}", "--split", "val"]
    assert main([*args, "--out", str(mine), "--overwrite"]) == 0
    assert json.loads(mine.read_text())["num_pairs"] == 2
    assert main(args) == 0 and main(args) == 0  # the default report: re-running replaces it
    default = tmp_path / "check-data-folder-val.json"
    default.write_text("a file of the user's by that name")
    assert main(args) == 2 and default.read_text() == "a file of the user's by that name"


# --------------------------------------------------------------- r27: bench flags, first


BENCH_FLAGS = [
    (["--steps", "0"], "--steps must be ≥ 1"),
    (["--batch", "0"], "--batch must be ≥ 1"),
    (["--warmup", "-1"], "--warmup must be ≥ 0"),
    (["--size", "16"], "--size must be ≥ 32"),
    (["--window-batch", "0", "--mode", "eval"], "--window-batch must be ≥ 1"),
    (["--json", "/sys/sanet-no-such-folder/b.json"], "the folder of --json"),
]


@pytest.mark.reliability("r27")
@pytest.mark.parametrize(("flags", "message"), BENCH_FLAGS)
def test_bench_checks_every_flag_before_building_a_model(
    flags, message, monkeypatch, capsys
) -> None:
    import sanet.experiments.bench

    if "/sys/" in flags[-1] and not Path("/sys").is_dir():
        pytest.skip("needs Linux sysfs")
    monkeypatch.setattr(sanet.experiments.bench.Peer, "build", _never)
    monkeypatch.setattr(sanet.experiments.bench, "resize_timings", _never)
    assert main(["bench", "--device", "cpu", "--models", "fcn:resnet10t", *flags]) == 2
    _one_line(capsys.readouterr().err, message)


# --------------------------------------------------------------- r29: export flags, first

EXPORT_FLAGS = [
    (["--size", "16"], "--size 16 is below 32"),
    (["--opset", "7"], "--opset 7 is outside 18.."),
    (["--opset", "99"], "--opset 99 is outside 18.."),
    (["--atol", "-1"], "--atol must be ≥ 0"),
    (["--rtol", "nan"], "--rtol must be ≥ 0"),
]


@pytest.mark.reliability("r29")
@pytest.mark.parametrize(("flags", "message"), EXPORT_FLAGS)
def test_export_checks_every_flag_before_loading_the_model(
    flags, message, ckpt, tmp_path, monkeypatch, capsys
) -> None:
    import sanet.models.registry

    monkeypatch.setattr(sanet.models.registry, "load_model", _never)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), *flags]) == 2
    _one_line(capsys.readouterr().err, message)
    assert not out.exists()


class _Conv(nn.Module):
    """A model that exports in a second: one conv, resized back to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": nn.functional.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear")}


@pytest.mark.reliability("r29")
@pytest.mark.export
@pytest.mark.parametrize("asked", [18, 21])
def test_the_recorded_opset_is_the_files(asked, tmp_path, monkeypatch) -> None:
    import onnx

    from sanet.exporting import export as E
    from sanet.inference.onnx_backend import read_onnx_metadata

    out = tmp_path / "m.onnx"
    meta = E.export_onnx(_Conv(), out, {"class_names": ["a", "b"]}, (40, 40), opset=asked)
    imported = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert imported[""] == asked == meta["opset"] == read_onnx_metadata(out)["opset"]
    # an exporter that keeps its own opset (as --opset 7 did: an opset-18 file) is refused
    real = E.to_onnx_proto
    monkeypatch.setattr(E, "to_onnx_proto", lambda m, size, opset: real(m, size, 18))
    other = tmp_path / "other.onnx"
    with pytest.raises(ValueError, match="wrote opset 18, not the 19 asked for"):
        E.export_onnx(_Conv(), other, {"class_names": ["a", "b"]}, (40, 40), opset=19)
    assert not other.exists()


# ---------------------------------------------------------- r31: advice that works


@pytest.mark.reliability("r31")
@pytest.mark.parametrize(
    ("budget", "names"),
    [
        (["train.epochs=2", "train.max_steps=3"], "a larger train.max_steps (now 3"),
        (["train.epochs=1"], "a larger train.epochs (now 1"),
    ],
)
def test_a_finished_run_names_the_key_that_ended_it(budget, names, tmp_path, capsys) -> None:
    recipe, run = tmp_path / "r.yaml", tmp_path / "run"
    recipe.write_text("model: {name: fcn}\n")
    args = ["train", str(recipe), "--out", str(run), "--set", *TINY, "train.val_every=0", *budget]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"finished its {3 if 'train.max_steps=3' in budget else 2} steps already" in err
    assert names in err
    if "max_steps" in names:  # the advice works: a larger max_steps trains on
        assert main([*args[:-1], "train.max_steps=4", "--resume"]) == 0
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 4


# ----------------------------------------- r32: a command that failed early leaves no folder

EARLY = ["train-resume", "compare-bad-data", "eval", "predict", "export", "explain", "bench"]


@pytest.mark.reliability("r32")
@pytest.mark.parametrize("command", EARLY)
def test_a_command_that_fails_before_writing_leaves_no_folder(
    command, ckpt, data, tmp_path, capsys
) -> None:
    new = tmp_path / "new" / "deeper"
    missing = str(tmp_path / "no-such-checkpoint")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: fcn}\n")
    image = str(data / "images/val/a.png")
    args = {
        "train-resume": ["train", str(recipe), "--out", str(new), "--resume", "--set", *TINY],
        "compare-bad-data": [
            *("compare", str(recipe), "--models", "fcn", "--seeds", "1", "--out", str(new)),
            *("--set", *TINY, "data.dataset=folder", "data.options={}"),
            f"data.root={tmp_path / 'no-data'}",
        ],
        "eval": ["eval", "--checkpoint", missing, "--data", f"folder:{data}", "--out", str(new)],
        "predict": ["predict", "--checkpoint", missing, image, "--out", str(new)],
        "export": ["export", "--checkpoint", missing, "--out", str(new / "m.onnx")],
        "explain": [
            "explain",
            "--checkpoint",
            missing,
            image,
            "--point",
            "1,1",
            "--out",
            str(new / "x.png"),
        ],
        "bench": ["bench", "--models", "nope:x", "--json", str(new / "b.json")],
    }[command]
    assert main(args) == 2
    _one_line(capsys.readouterr().err.strip().splitlines()[-1])
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ r33: messages that read


# two articles in a row ("a the"), or a word twice ("the the")
DOUBLED = re.compile(r"\b(a|an|the)\s+(a|an|the)\b|\b(\w{2,})\s+\3\b", re.I)


@pytest.mark.reliability("r33")
def test_no_message_in_the_source_doubles_a_word() -> None:
    """Every string literal of the package (f-strings with their fields as ``{}``): no doubled
    word ("the the") and no two articles in a row ("a the")."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
                text = "".join(str(p) for p in parts)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {m.group(0)!r}" for m in DOUBLED.finditer(text)]
    allowed = {"'sbd SBD'"}  # a flag and its value (--sbd SBD)
    assert [f for f in found if not any(a in f for a in allowed)] == []


@pytest.mark.reliability("r33")
def test_the_messages_built_from_parts_read_correctly(tmp_path) -> None:
    """The messages that are assembled from parts at run time (where "Choose a the folder of
    --out folder" came from), rendered for each of their shapes."""
    from sanet._files import (
        ensure_new_file,
        ensure_writable_dir,
        ensure_writable_file,
        refuse_existing,
        refuse_foreign_files,
    )
    from sanet.errors import flag_names

    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    calls = [
        lambda: ensure_writable_dir(a_file, "--out"),
        lambda: ensure_writable_dir(a_file / "sub", "--out"),
        lambda: ensure_writable_file(a_file / "r.json", "--out"),
        lambda: ensure_writable_file(tmp_path, "--json", "bench.json"),
        lambda: ensure_new_file(a_file, "--out", False),
        lambda: refuse_foreign_files(tmp_path, [a_file], "--out", "sanet compare", "runs/"),
        lambda: refuse_existing([a_file], "--out", False),
        lambda: refuse_existing([a_file, a_file], "--out", False),
    ]
    if Path("/sys").is_dir():
        calls.append(lambda: ensure_writable_dir("/sys/sanet-no-such-folder/x", "--out"))
    for voice, overwrite in (({}, "Pass overwrite=True"), ({"overwrite": "--overwrite"}, None)):
        overwrite = overwrite or "Pass --overwrite"  # the command line names its flag
        with flag_names(voice) if voice else contextlib.nullcontext():
            for call in calls:
                with pytest.raises(OSError) as info:
                    call()
                text = str(info.value)
                assert not DOUBLED.search(text), text
                assert "a the" not in text and "a --" not in text and text.endswith("."), text
                assert "Fix:" in text or overwrite in text or "give a file name" in text, text
