"""Exact bilinear resizing as matrix products (models/resize.py) against ``F.interpolate``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from sanet.inference import PAPER_SCALES
from sanet.models.resize import (
    bilinear_method,
    interpolation_matrix,
    resize_bilinear,
    set_bilinear_method,
)


@pytest.fixture(autouse=True)
def _measured_choice() -> Iterator[None]:
    yield
    for device_type in ("cpu", "cuda"):
        set_bilinear_method(device_type, "auto")


def _check_equal(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """The matrix path (forced, on CPU) against F.interpolate: values and gradients, fp32."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    ours = resize_bilinear(x, size, method="matmul")
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    grad_out = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, grad_out)
    (g_ours,) = torch.autograd.grad(ours, x, grad_out)
    # Each input's gradient sums up to (H/h)·(W/w)·4 products; float32 rounding of such sums
    # reaches ~1e-5 at ×8, hence the absolute tolerance.
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((5, 7), (33, 31)),  # odd, up
        ((65, 97), (33, 49)),  # odd, down (the head's stage resize direction)
        ((1, 1), (5, 3)),  # a single pixel
        ((33, 17), (3, 40)),  # down in one axis, up in the other
        ((61, 61), (481, 481)),  # non-integer ratio
    ],
)
def test_matches_interpolate_at_odd_sizes(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    _check_equal((2, 3, *in_hw), out_hw)


@pytest.mark.parametrize("scale", PAPER_SCALES)
def test_matches_interpolate_at_every_eval_scale(scale: float) -> None:
    # The multi-scale protocol resizes a 500×375 image's long side to 520·s (SPEC §2.5); the
    # model sees at most 480×480 windows and upsamples its output-stride-8 logits to them.
    long_side = round(520 * scale)
    short_side = round(375 * long_side / 500)
    window = (min(480, short_side), min(480, long_side))
    logits = (-(-window[0] // 8), -(-window[1] // 8))  # ⌈·/8⌉ at output stride 8
    _check_equal((1, 5, *logits), window)


def test_interpolation_matrix_by_hand() -> None:
    # 2 → 4: sources at max(0, (i + 0.5)/2 − 0.5) = 0, 0.25, 0.75, 1.25 (clamped to the last)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(interpolation_matrix(4, 2), expected)
    # 5 → 2 (down): sources at 0.75 and 3.25
    down = torch.zeros(2, 5)
    down[0, :2] = torch.tensor([0.25, 0.75])
    down[1, 3:] = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(interpolation_matrix(2, 5), down)
    assert torch.allclose(interpolation_matrix(37, 11).sum(1), torch.ones(37))


def test_auto_picks_the_measured_method_and_can_be_overridden() -> None:
    assert bilinear_method("cuda", grad=True) == bilinear_method("cuda", grad=False) == "matmul"
    assert bilinear_method("cpu", grad=True) == "matmul"
    assert bilinear_method("cpu", grad=False) == "interpolate"
    assert bilinear_method("meta", grad=True) == "interpolate"
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    # which kernel ran shows in the autograd graph
    assert "Upsample" not in resize_bilinear(x, (8, 8)).grad_fn.name()
    set_bilinear_method("cpu", "interpolate")
    assert "UpsampleBilinear2D" in resize_bilinear(x, (8, 8)).grad_fn.name()
    set_bilinear_method("cpu", "auto")
    assert bilinear_method("cpu", grad=True) == "matmul"
    with pytest.raises(ValueError, match="method must be one of"):
        set_bilinear_method("cpu", "bicubic")  # type: ignore[arg-type]


def test_low_precision_keeps_the_input_dtype() -> None:
    x = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    ours = resize_bilinear(x, (64, 64), method="matmul")
    ref = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)  # bf16 rounding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resize_bilinear(x.float(), (64, 64), method="matmul").dtype == torch.float32
