"""The export's parity gate at its boundaries: onnxruntime against PyTorch on a hand-built graph
(``logits = W·x + b``, test_deploy_export.py) and a PyTorch twin whose logits are shifted or whose
classes are swapped by amounts chosen against the documented tolerance
(``max|Δ| ≤ 1e-4 + 1e-4 · max|logits|`` and ≥ 99.9 % arg-max agreement, docs/deploy.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sanet.exporting.export import ExportCheckError, ParityTolerance, check_parity
from test_deploy_export import BIAS, WEIGHTS, conv1x1_onnx

SIZES = [(33, 47), (65, 97)]


class Twin(nn.Module):
    """PyTorch's side: the same 1×1 convolution, with ``shift`` added to the logits of class 0
    and, with ``swap``, classes 0 and 1 exchanged."""

    def __init__(self, shift: float = 0.0, swap: bool = False) -> None:
        super().__init__()
        w, b = torch.from_numpy(WEIGHTS.copy()), torch.from_numpy(BIAS.copy())
        if swap:
            w, b = w[[1, 0, 2]], b[[1, 0, 2]]
        self.register_buffer("w", w[:, :, None, None])
        self.register_buffer("b", b + torch.tensor([shift, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": nn.functional.conv2d(x, self.w, self.b)}


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return conv1x1_onnx(tmp_path_factory.mktemp("parity") / "conv.onnx", {}).read_bytes()


def _bound() -> float:
    """The documented bound for these inputs: the largest |logit| over the checked images (the
    gate draws them from a generator seeded with 0: first size with a batch of 2)."""
    g = torch.Generator().manual_seed(0)
    largest = 0.0
    for i, (h, w) in enumerate(SIZES):
        x = torch.randn(2 if i == 0 else 1, 3, h, w, generator=g)
        largest = max(largest, float(Twin()(x)["out"].abs().max()))
    return 1e-4 + 1e-4 * largest


def test_defaults_are_the_documented_tolerance() -> None:
    assert ParityTolerance() == ParityTolerance(atol=1e-4, rtol=1e-4, argmax=0.999)


def test_equal_outputs_pass(graph: bytes) -> None:
    report = check_parity(Twin(), graph, SIZES)
    assert [r["size"] for r in report["sizes"]] == [list(s) for s in SIZES]
    assert max(r["max_abs_diff"] for r in report["sizes"]) < 1e-5
    assert min(r["argmax_agreement"] for r in report["sizes"]) == 1.0


def test_a_shift_under_the_bound_passes_and_over_it_fails(graph: bytes) -> None:
    bound = _bound()
    check_parity(Twin(shift=0.5 * bound), graph, SIZES)
    with pytest.raises(ExportCheckError, match=r"max \|Δ logits\|"):
        check_parity(Twin(shift=2 * bound), graph, SIZES)


def test_argmax_agreement_is_checked_even_with_a_loose_value_tolerance(graph: bytes) -> None:
    loose = ParityTolerance(atol=100.0, rtol=0.0)  # any value difference passes ...
    with pytest.raises(ExportCheckError, match=r"argmax agreement \d+\.\d+% \(required 99\.9%\)"):
        check_parity(Twin(swap=True), graph, SIZES, loose)  # ... swapped classes do not


def test_nan_outputs_fail(graph: bytes, tmp_path: Path) -> None:
    class Nan(Twin):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": super().forward(x)["out"] * np.float32("nan")}

    with pytest.raises(ExportCheckError):
        check_parity(Nan(), graph, SIZES, ParityTolerance(atol=1e9))
