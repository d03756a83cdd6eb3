"""The from-scratch recipe for a user's own small dataset trains end to end on the folder layout."""

from __future__ import annotations

import json
from pathlib import Path

from sanet.cli import main
from sanet.config import recipe_path


def test_scratch_small_recipe_trains_on_a_folder_dataset(tmp_path: Path) -> None:
    data, run = tmp_path / "mine", tmp_path / "run"
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(data),
                "--num-train",
                "8",
                "--num-val",
                "2",
                "--size",
                "72",
            ]
        )
        == 0
    )
    # the recipe as shipped, made small: each image at its own size (base_size 0), 64 px crops
    overrides = [
        f"data.root={data}",
        "data.crop_size=64",
        "data.num_workers=0",
        "eval.crop_size=64",
        "eval.stride=32",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.val_every=1",
        "train.log_every=1",
    ]
    assert (
        main(["train", str(recipe_path("scratch_small")), "--out", str(run), "--set", *overrides])
        == 0
    )
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if x["kind"] == "val"]
    assert val and 0.0 <= val[-1]["mIoU"] <= 1.0
    saved = (run / "config.yaml").read_text()
    assert "base_size: 0" in saved and "attn_act: sigmoid" in saved
    assert (run / "model" / "model.safetensors").is_file()
