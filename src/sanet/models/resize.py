"""Exact bilinear resizing, computed the fastest way the device allows.

Bilinear resizing with ``align_corners=False`` (and no antialiasing) is separable and linear:
``Y = A_h · X · A_wᵀ`` with two small interpolation matrices (two non-zero taps per row that
sum to 1). Written as two matrix products it is *the same function* as
``F.interpolate(X, size, mode="bilinear", align_corners=False)`` up to float rounding, but runs
on the matrix units, forward and backward. Which form is faster depends on the device and on
whether a backward pass follows, so the choice is a table keyed by ``(device type, grad)``
(:func:`set_bilinear_method` overrides it; ``sanet bench --resize`` measures both forms):

- ``cuda``: ``"matmul"``. Measured by the session that filed issue 11 on an H100 (torch 2.11):
  a (16, 59, 64, 64) → 512×512 upsampling, forward + backward, took 48.4 ms (bf16) and 11.7 ms
  (fp32) with ``F.interpolate`` against 1.1 ms and 2.1 ms as matrix products; the interpolate
  backward was the single slowest kernel of a SANet training step.
- ``cpu`` with a backward pass: ``"matmul"``; forward only: ``"interpolate"``. Measured on the
  2-core development CPU (docs/benchmarks.md): forward + backward 1.4–1.6× faster as matrix
  products, forward alone as fast or slower.
- anything else (``meta``, ``mps``, ...), and any export (ONNX, ``torch.export``):
  ``"interpolate"``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from sanet.errors import UsageError

Method = Literal["auto", "matmul", "interpolate"]
METHODS = ("auto", "matmul", "interpolate")
# (device type, a backward pass follows) → method; absent = "interpolate". Measured: see above.
_MEASURED: dict[tuple[str, bool], str] = {
    ("cuda", False): "matmul",
    ("cuda", True): "matmul",
    ("cpu", True): "matmul",
}
_PREFERRED = dict(_MEASURED)


def set_bilinear_method(device_type: str, method: Method, grad: bool | None = None) -> None:
    """Use ``method`` for :func:`resize_bilinear` on ``device_type``, for calls with a backward
    pass (``grad=True``), without one (``False``) or both (``None``); ``"auto"`` restores the
    measured choice.

    Example: ``set_bilinear_method("cuda", "interpolate")`` to compare against ``F.interpolate``.
    """
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}, got {method!r}.")
    for g in (False, True) if grad is None else (grad,):
        key = (device_type, g)
        if method != "auto":
            _PREFERRED[key] = method
        elif key in _MEASURED:
            _PREFERRED[key] = _MEASURED[key]
        else:
            _PREFERRED.pop(key, None)


def bilinear_method(device_type: str, grad: bool) -> str:
    """The method :func:`resize_bilinear` uses on ``device_type`` with ``method="auto"``."""
    return _PREFERRED.get((device_type, grad), "interpolate")


def interpolation_taps(
    out_size: int, in_size: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two taps of 1-D linear resizing with ``align_corners=False``, as PyTorch computes them.

    Output ``i`` is ``(1 − frac[i]) · x[i0[i]] + frac[i] · x[i1[i]]``, at source position
    ``max(0, (i + 0.5) · s − 0.5)`` with ``s = in/out`` in float32, rounded once to float32 as
    PyTorch's kernels compute it (a fused multiply-add): the very weights ``F.interpolate``
    uses along that axis. :func:`interpolation_matrix` and the protocol's banded resize both
    take their weights from here.

    Shape: three ``(out_size,)`` tensors: ``i0``, ``i1`` (int64) and ``frac`` (float32).
    """
    where = "cpu" if torch.device(device or "cpu").type == "mps" else device  # mps: no float64
    scale = torch.full((), in_size, device=where, dtype=torch.float32) / out_size  # as C++ does
    # float64 holds (i + 0.5)·s exactly, so rounding its difference with 0.5 to float32 is the
    # single rounding of a fused multiply-add.
    pos = (torch.arange(out_size, device=where, dtype=torch.float64) + 0.5) * scale.double() - 0.5
    pos = pos.float().clamp(min=0)
    i0 = pos.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)  # the last source sample repeats at the border
    return i0.to(device), i1.to(device), (pos - i0).to(device)


def interpolation_matrix(
    out_size: int,
    in_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``(out_size, in_size)`` matrix of 1-D linear resizing with ``align_corners=False``:
    row ``i`` holds the two taps of :func:`interpolation_taps`, so that ``A @ x`` uses the very
    weights ``F.interpolate`` uses along that axis.

    Shape: ``(out_size, in_size)``; every row sums to 1.
    """
    where = "cpu" if torch.device(device or "cpu").type == "mps" else device
    i0, i1, frac = interpolation_taps(out_size, in_size, where)
    a = torch.zeros(out_size, in_size, device=where, dtype=torch.float32)
    a.scatter_add_(1, i0[:, None], (1 - frac)[:, None])
    a.scatter_add_(1, i1[:, None], frac[:, None])
    return a.to(device, dtype)


def resize_bilinear(
    x: torch.Tensor, size: tuple[int, int] | torch.Size, method: Method = "auto"
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``, by the fastest exact
    method for ``x``'s device and whether ``x`` needs a gradient (``method="auto"``, see the
    module docstring) or by the one named. With ``"matmul"`` on CUDA, float32 inputs stay exact
    only while TF32 matrix products are off (PyTorch's default).

    Shape:
        - x: ``(N, C, h, w)``
        - output: ``(N, C, H, W)`` with ``(H, W) = size``.
    """
    if method == "auto":
        grad = torch.is_grad_enabled() and x.requires_grad
        method = bilinear_method(x.device.type, grad)  # type: ignore[assignment]
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            method = "interpolate"  # an exported graph gets ONNX's own Resize, whatever device
    if method == "interpolate":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if method != "matmul":
        raise UsageError(f"method must be one of {METHODS}, got {method!r}.")
    (h, w), (H, W) = x.shape[-2:], tuple(size)
    # Autocast off: the products run in x's own dtype, so the result has the dtype (and the
    # rounding) F.interpolate would give; under bf16 autocast the logits are bf16 already.
    with torch.autocast(x.device.type, enabled=False):
        a_h = interpolation_matrix(H, h, x.device, x.dtype)  # (H, h)
        a_w = interpolation_matrix(W, w, x.device, x.dtype)  # (W, w)
        # Of the two orders, the one with fewer multiply-adds per channel.
        if H * h * w + H * w * W <= h * w * W + H * h * W:
            return (a_h @ x) @ a_w.T  # (N, C, H, w) → (N, C, H, W)
        return a_h @ (x @ a_w.T)  # (N, C, h, W) → (N, C, H, W)
