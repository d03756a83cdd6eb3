"""``sanet bench`` (experiments/bench.py, api/bench.py, cli/bench.py): peers side by side,
FLOPs, ratios, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sanet.cli import main
from sanet.experiments.bench import add_ratios, parse_spec
from sanet.experiments.measure import count_flops, interleaved, warm_up


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.c2(self.c1(x))}


def test_count_flops_by_hand() -> None:
    # A multiply-add is 2 FLOPs. On an 8×8 image: c1 = 2·4·3·9·64, c2 = 2·2·4·64.
    c1, c2 = 2 * 4 * 3 * 9 * 64, 2 * 2 * 4 * 64
    model = TwoConvs()
    assert count_flops(model, torch.empty(1, 3, 8, 8), train=False) == c1 + c2
    # Backward: both weight gradients (as much as each forward), and c2's input gradient; the
    # image needs none, so c1 has no input gradient.
    assert count_flops(model, torch.empty(2, 3, 8, 8), train=True) == 2 * (2 * c1 + 3 * c2)
    assert next(model.parameters()).device.type == "cpu"  # counted on a meta copy


def test_ratios_by_hand() -> None:
    rows = [
        {"mode": "infer", "images_per_s": 10.0, "tflops": 1.0},
        {"mode": "infer", "images_per_s": 5.0, "tflops": 0.75},
        {"mode": "train", "images_per_s": 2.0, "tflops": None},
        {"mode": "train", "images_per_s": 3.0, "tflops": 0.1},
    ]
    add_ratios(rows)
    assert [r["ratio"] for r in rows] == [1.0, 0.5, 1.0, 1.5]
    assert [r["ratio_per_flop"] for r in rows] == [1.0, 0.75, None, None]


def test_warm_up_then_interleaved_rounds() -> None:
    log: list[str] = []
    call, info = warm_up(lambda: lambda: log.append("a"), torch.device("cpu"), 2, resident=0)
    assert log == ["a"] * 3 and info["first_step_s"] >= 0
    assert info["peak_memory_gb"] is None  # CUDA only
    log.clear()
    seconds = interleaved([call, lambda: log.append("b")], torch.device("cpu"), steps=3)
    assert log == ["a", "b"] * 3  # every round calls each peer once, in turn
    assert [len(s) for s in seconds] == [3, 3]


@pytest.mark.parametrize("spec", ["resnet50s", "unet:resnet50s", "tv:unet", "sanet:"])
def test_bad_specs_say_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"KIND:BACKBONE or tv:NAME|torchvision peers"):
        parse_spec(spec)


def test_cli_prints_both_peers_with_ratios_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The done-when command at a tiny size: ours and torchvision's in one process.
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--device",
        "cpu",
        "--models",
        "sanet:resnet18d",
        "tv:fcn_resnet50",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--size",
        "32",
        "--batch",
        "1",
        "--classes",
        "3",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sanet:resnet18d" in printed and "tv:fcn_resnet50" in printed
    assert "× first" in printed and "sanet bench --device cuda" in printed  # the GPU command
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert report["settings"]["size"] == 32 and report["settings"]["upsample"] == "auto"
    rows = report["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("sanet:resnet18d", "infer"),
        ("tv:fcn_resnet50", "infer"),
        ("sanet:resnet18d", "train"),
        ("tv:fcn_resnet50", "train"),
    ]
    for ref, peer in (rows[0], rows[1]), (rows[2], rows[3]):
        assert ref["ratio"] == 1.0
        assert peer["ratio"] == pytest.approx(peer["images_per_s"] / ref["images_per_s"])
        per_flop = peer["images_per_s"] * peer["gflops_per_image"]
        per_flop /= ref["images_per_s"] * ref["gflops_per_image"]
        assert peer["ratio_per_flop"] == pytest.approx(per_flop, rel=1e-2)  # GFLOPs are rounded
        assert peer["latency_ms"] == pytest.approx(1e3 / peer["images_per_s"])  # batch 1
    # a training step counts the forward and (about twice as much) the backward
    assert 2.5 < rows[2]["gflops_per_image"] / rows[0]["gflops_per_image"] < 3.5


def test_cli_resize_times_both_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "resize.json"
    argv = [
        "bench",
        "--resize",
        "--device",
        "cpu",
        "--size",
        "32",
        "--batch",
        "1",
        "--classes",
        "2",
        "--steps",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    assert "(1, 2, 4, 4) → 32×32" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["pass"]) for r in rows} == {
        (m, p) for m in ("interpolate", "matmul") for p in ("forward", "forward+backward")
    }
    assert all(r["ms"] > 0 for r in rows)
