"""SANetLoss against cross-entropy and BCE computed by hand (Sec. 3), on chosen tensors and on
a real SANet's train-mode outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sanet
from conftest import TINY_BACKBONE
from sanet import SANetLoss
from sanet.losses import check_labels, class_presence


def _ce_by_hand(logits: torch.Tensor, target: torch.Tensor) -> float:
    total, count = 0.0, 0
    n, k, h, w = logits.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                t = int(target[b, i, j])
                if t == 255:
                    continue
                z = [float(logits[b, c, i, j]) for c in range(k)]
                total += math.log(sum(math.exp(v) for v in z)) - z[t]
                count += 1
    return total / count if count else 0.0


def _bce_by_hand(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_terms_match_hand_computation() -> None:
    torch.manual_seed(1)
    target = torch.tensor([[[0, 1, 255], [1, 1, 0]], [[2, 2, 2], [255, 2, 2]]])  # (2, 2, 3)
    out = {
        "out": torch.randn(2, 3, 2, 3),
        "mask": torch.randn(2, 3, 2, 3),
        "cat": torch.randn(2, 3),
    }
    terms = SANetLoss(alpha=0.2, beta=0.8)(out, target)
    assert terms["mask"].item() == pytest.approx(_ce_by_hand(out["mask"], target), rel=1e-5)
    assert terms["dense"].item() == pytest.approx(_ce_by_hand(out["out"], target), rel=1e-5)
    present = [[1, 1, 0], [0, 0, 1]]  # crop 0 has classes 0 and 1, crop 1 only class 2
    bce = (
        sum(
            _bce_by_hand(float(out["cat"][b, c]), present[b][c]) for b in range(2) for c in range(3)
        )
        / 6
    )
    assert terms["cat"].item() == pytest.approx(bce, rel=1e-5)
    expected = terms["mask"] + 0.2 * terms["cat"] + 0.8 * terms["dense"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the defaults are the paper's best weights (Fig. 4: α = 0.2, β = 0.8), all by hand
    default = SANetLoss()(out, target)["loss"].item()
    mask, dense = _ce_by_hand(out["mask"], target), _ce_by_hand(out["out"], target)
    assert default == pytest.approx(mask + 0.2 * bce + 0.8 * dense, rel=1e-5)


def test_all_ignore_crop_contributes_zero() -> None:
    target = torch.full((1, 4, 4), 255)
    out = {
        "out": torch.randn(1, 5, 4, 4),
        "mask": torch.randn(1, 5, 4, 4),
        "cat": torch.randn(1, 5),
    }
    out = {k: v.requires_grad_() for k, v in out.items()}
    terms = SANetLoss()(out, target)
    for name in ("loss", "mask", "cat", "dense"):
        assert torch.isfinite(terms[name]) and terms[name].item() == 0.0
    terms["loss"].backward()  # gradients exist and are finite (zero)
    assert all(torch.all(v.grad == 0) for v in out.values())


def test_all_ignore_crop_does_not_change_other_crops_loss() -> None:
    target = torch.tensor([[[0, 1], [1, 2]]])
    out = {
        "out": torch.randn(1, 3, 2, 2),
        "mask": torch.randn(1, 3, 2, 2),
        "cat": torch.randn(1, 3),
    }
    alone = SANetLoss()(out, target)
    both = SANetLoss()(
        {k: torch.cat([v, torch.randn_like(v)]) for k, v in out.items()},
        torch.cat([target, torch.full_like(target, 255)]),
    )
    for name in ("loss", "mask", "cat", "dense"):
        assert both[name].item() == pytest.approx(alone[name].item(), rel=1e-6)


def test_fcn_outputs_train_with_plain_cross_entropy() -> None:
    target = torch.tensor([[[0, 1], [255, 2]]])
    logits = torch.randn(1, 3, 2, 2)
    terms = SANetLoss()({"out": logits}, target)
    assert terms["loss"].item() == pytest.approx(_ce_by_hand(logits, target), rel=1e-5)
    assert terms["cat"].item() == 0 and terms["mask"].item() == 0


def test_class_presence_and_bad_labels() -> None:
    target = torch.tensor([[[0, 0], [3, 255]], [[255, 255], [255, 255]]])
    assert class_presence(target, 4).tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"Label 7 is outside 0\.\.3"):
        SANetLoss()({"out": torch.randn(1, 4, 1, 1)}, torch.tensor([[[7]]]))
    with pytest.raises(ValueError, match=r"Label -1 is outside 0\.\.3"):
        check_labels(torch.tensor([[[0, -1]]]), 4)
    with pytest.raises(ValueError, match="differ in size"):
        SANetLoss()({"out": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 5, 5, dtype=torch.long))


def test_loss_on_a_real_sanets_train_outputs() -> None:
    """The loss of SANet's own train-mode outputs (upsampled M and D, c) at an odd size with
    ignored pixels, against CE / BCE in float64 numpy (log-sum-exp, the BCE formula)."""
    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=5).train()
    target = torch.randint(0, 3, (2, 45, 61))  # crop 0 and 1 hold classes 0..2 only
    target[0, :10] = 255
    target[1, 20:, :] = 4
    out = model(torch.randn(2, 3, 45, 61))
    assert out["mask"].shape == out["out"].shape == (2, 5, 45, 61)
    terms = SANetLoss(alpha=0.2, beta=0.8)(out, target)

    t = target.numpy()
    valid = t != 255

    def ce(logits: torch.Tensor) -> float:
        z = logits.detach().double().numpy().transpose(0, 2, 3, 1)[valid]  # (P, K)
        m = z.max(1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
        return float(np.mean(lse - z[np.arange(len(z)), t[valid]]))

    present = np.array([[float((t[i][valid[i]] == k).any()) for k in range(5)] for i in range(2)])
    c = out["cat"].detach().double().numpy()
    p = 1 / (1 + np.exp(-c))
    bce = float(np.mean(-(present * np.log(p) + (1 - present) * np.log(1 - p))))
    assert present.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 1]]
    assert terms["mask"].item() == pytest.approx(ce(out["mask"]), rel=1e-5)
    assert terms["dense"].item() == pytest.approx(ce(out["out"]), rel=1e-5)
    assert terms["cat"].item() == pytest.approx(bce, rel=1e-5)
    total = ce(out["mask"]) + 0.2 * bce + 0.8 * ce(out["out"])
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)
