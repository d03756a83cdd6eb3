"""The model card (``README.md`` of a ``save_pretrained`` folder, models/card.py): valid Hugging
Face Hub metadata holding a real run's numbers, rendered again when a record is added, and never
read when loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import sanet
from conftest import tiny_recipe
from sanet.config import load_config
from sanet.models.card import README_NAME, recipe_record, write_model_card
from sanet.training.trainer import Trainer

huggingface_hub = pytest.importorskip("huggingface_hub")

TINY = tiny_recipe(
    backbone="resnet18d",
    batch=3,
    data__options="{num_images: 6, size: 40, seed: 0}",
    train__val_every=1,
    eval__crop_size=32,
    eval__stride=24,
)


def front_matter(text: str) -> dict:
    """The YAML between the first two ``---`` lines, as the Hub reads it."""
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.mark.slow  # a training run (the default suite checks a run's card in test_r02)
def test_a_real_runs_card_holds_its_numbers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(load_config(None, TINY), run).fit()
    text = (run / "model" / README_NAME).read_text()
    # the numbers the run logged (metrics.jsonl, written by the run log, not the card)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r["kind"] == "val"), key=lambda r: r["mIoU"])
    front = front_matter(text)
    assert front["library_name"] == "sanet" and front["pipeline_tag"] == "image-segmentation"
    assert front["datasets"] == ["synthetic"] and "resnet18d" in front["tags"]
    assert front["metrics"] == ["mean_iou"]
    result = front["model-index"][0]["results"][0]
    assert result["task"]["type"] == "image-segmentation"
    assert (result["dataset"]["name"], result["dataset"]["split"]) == ("synthetic", "val")
    metric = result["metrics"][0]
    assert metric["type"] == "mean_iou" and metric["value"] == round(best["mIoU"], 4)
    protocol = metric["args"]["protocol"]
    assert (protocol["crop_size"], protocol["stride"], protocol["scales"]) == (32, 24, [1.0])
    # huggingface_hub reads the same metadata into its own evaluation records
    card = huggingface_hub.ModelCard(text)
    (evaluation,) = card.data.eval_results
    assert (evaluation.metric_type, evaluation.metric_value) == ("mean_iou", round(best["mIoU"], 4))
    assert card.data.library_name == "sanet"
    # the body: per-class IoU from the log, the recipe's seed, how to load
    names = json.loads((run / "model" / "config.json").read_text())["metadata"]["class_names"]
    for name, iou in zip(names, best["IoU"], strict=True):
        assert f"| {name} | {'—' if iou is None else f'{iou:.4f}'} |" in text
    assert f"**mIoU {best['mIoU']:.4f}**" in text and f"step {best['step']}" in text
    assert "seed: 0" in text and 'sanet.Predictor("path/to/this/folder")' in text
    model, _ = sanet.load_model(run)  # the card changes nothing about loading
    assert model.num_classes == len(names)


def test_loading_stays_strict_and_ignores_the_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sanet.build_model("fcn", backbone="resnet18d", num_classes=2).eval()
    folder = model.save_pretrained(tmp_path / "m", metadata={"class_names": ["bg", "fg"]})
    text = (folder / README_NAME).read_text()
    front = front_matter(text)
    assert front["library_name"] == "sanet" and "model-index" not in front  # nothing measured
    assert "| classes | 2: bg, fg |" in text
    (folder / README_NAME).write_text("---\nnot: [valid\n")  # a broken card is not read
    x = torch.randn(1, 3, 45, 61)
    loaded, meta = sanet.load_model(folder)
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], model(x)["out"])
    assert meta == {"class_names": ["bg", "fg"]}
    (folder / "model.safetensors").unlink()  # still strict: the weights are required
    with pytest.raises(FileNotFoundError, match="not a save_pretrained folder"):
        sanet.load_model(folder)


def test_a_record_added_later_is_rendered_again(tmp_path: Path) -> None:
    model = sanet.build_model("fcn", backbone="resnet18d", num_classes=2)
    folder = model.save_pretrained(tmp_path / "m", metadata={"class_names": ["bg", "fg"]})
    config = json.loads((folder / "config.json").read_text())
    config["metadata"]["calibration"] = {"temperature": 1.37, "ece_after": 0.012}
    (folder / "config.json").write_text(json.dumps(config))  # as `sanet calibrate` stores it
    write_model_card(folder)
    text = (folder / README_NAME).read_text()
    assert "## Calibration" in text and "temperature: 1.37" in text


def test_recipe_paths_are_cut_to_their_last_part() -> None:
    recipe = {
        "data": {"root": "/home/alice/data/VOCdevkit/VOC2012", "dataset": "voc"},
        "model": {"init_from": "/home/alice/runs/aug", "pretrained_backbone": True},
        "train": {"lr": 0.01},
    }
    out = recipe_record(recipe)
    assert out["data"] == {"root": "VOC2012", "dataset": "voc"}
    assert out["model"] == {"init_from": "aug", "pretrained_backbone": True}
    assert out["train"] == {"lr": 0.01}
