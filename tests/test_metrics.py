"""ConfusionMatrix against independent references: a numpy loop and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sanet.metrics import MIOU_CONVENTION, ConfusionMatrix, per_class_table

K, IGNORE = 6, 255


def _numpy_reference(preds, targets, k, ignore):
    """Plain per-class loops over numpy arrays, no confusion matrix."""
    p = np.concatenate([x.ravel() for x in preds])
    t = np.concatenate([x.ravel() for x in targets])
    keep = t != ignore
    p, t = p[keep], t[keep]
    ious = []
    for c in range(k):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
    present = [v for v in ious if v is not None]
    return float(np.mean(p == t)), float(np.mean(present)), ious


def _random_batches(seed, n_batches=3):
    """Random batches with ignore pixels; class 4 never appears; class 5 only in predictions."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_batches):
        t = torch.randint(0, 4, (2, 45, 45), generator=g)
        noise = torch.randint(0, 4, t.shape, generator=g)
        p = torch.where(torch.rand(t.shape, generator=g) < 0.6, t, noise)  # ~70% correct
        p[torch.rand(t.shape, generator=g) < 0.05] = 5
        t[torch.rand(t.shape, generator=g) < 0.2] = IGNORE
        preds.append(p)
        targets.append(t)
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_reference(seed):
    preds, targets = _random_batches(seed)
    cm = ConfusionMatrix(K, ignore_index=IGNORE)
    for p, t in zip(preds, targets, strict=True):
        cm.update(p, t)
    res = cm.compute()
    pix, miou, ious = _numpy_reference(
        [p.numpy() for p in preds], [t.numpy() for t in targets], K, IGNORE
    )
    assert res["pixAcc"] == pytest.approx(pix, abs=1e-12)
    assert res["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert res["IoU"][4] is None  # absent from prediction and ground truth
    assert res["IoU"][5] == 0.0  # predicted but never in ground truth: counts, with IoU 0
    for got, want in zip(res["IoU"], ious, strict=True):
        assert (got is None and want is None) or got == pytest.approx(want, abs=1e-12)
    assert res["convention"] == MIOU_CONVENTION and "present" in res["convention"]


def test_matches_torchmetrics_jaccard():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    preds, targets = _random_batches(7)
    cm = ConfusionMatrix(K, ignore_index=IGNORE)
    jac = MulticlassJaccardIndex(K, ignore_index=IGNORE, average="none")
    acc = MulticlassAccuracy(K, ignore_index=IGNORE, average="micro")
    for p, t in zip(preds, targets, strict=True):
        cm.update(p, t)
        jac.update(p, t)
        acc.update(p, t)
    res = cm.compute()
    ref = jac.compute()
    for k in range(K):
        if res["IoU"][k] is not None:
            assert res["IoU"][k] == pytest.approx(float(ref[k]), abs=1e-6)
    assert res["pixAcc"] == pytest.approx(float(acc.compute()), abs=1e-6)
    # torchmetrics' confusion matrix (rows gt, cols pred) equals ours
    from torchmetrics.classification import MulticlassConfusionMatrix

    tm_cm = MulticlassConfusionMatrix(K, ignore_index=IGNORE)
    for p, t in zip(preds, targets, strict=True):
        tm_cm.update(p, t)
    assert torch.equal(cm.matrix_cpu(), tm_cm.compute().long())


def test_logits_input_hand_computed():
    # 1×2×2 image, 3 classes: targets [[0, 1], [255, 2]], predictions [[0, 2], [1, 2]]
    target = torch.tensor([[[0, 1], [255, 2]]])
    pred_ids = torch.tensor([[[0, 2], [1, 2]]])
    logits = torch.nn.functional.one_hot(pred_ids, 3).permute(0, 3, 1, 2).float() * 5
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    res = cm.compute()
    # labelled: (0→0 ok), (1→2 wrong), (2→2 ok); the ignore pixel's prediction 1 is not counted
    assert res["pixAcc"] == pytest.approx(2 / 3)
    # IoU0 = 1/1, IoU1 = 0/(0+0+1) = 0, IoU2 = 1/(1+1+0) = 0.5
    assert res["IoU"] == pytest.approx([1.0, 0.0, 0.5])
    assert res["mIoU"] == pytest.approx(0.5)
    assert res["labelled_pixels"] == 3


def test_reset_and_empty():
    cm = ConfusionMatrix(3)
    res = cm.compute()
    assert res["pixAcc"] == 0.0 and res["mIoU"] == 0.0 and res["IoU"] == [None] * 3
    cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert cm.compute()["pixAcc"] == 1.0
    cm.reset()
    assert cm.matrix_cpu().sum() == 0
    cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    assert cm.compute()["labelled_pixels"] == 0


def test_all_reduce_is_noop_without_distributed():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    before = cm.matrix_cpu().clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix_cpu(), before)


@pytest.mark.slow
def test_all_reduce_sums_over_processes(tmp_path):
    """Two gloo processes on CPU: each counts its own shard, the sum equals a single pass."""
    import torch.multiprocessing as mp

    preds, targets = _random_batches(3, n_batches=2)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), preds, targets), nprocs=2, join=True)
    single = ConfusionMatrix(K)
    for p, t in zip(preds, targets, strict=True):
        single.update(p, t)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got, single.matrix_cpu())


def _ddp_worker(rank, world, folder, preds, targets):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        cm = ConfusionMatrix(K)
        cm.update(preds[rank], targets[rank])
        cm.all_reduce()
        torch.save(cm.matrix_cpu(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_bad_inputs_name_the_problem():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="Logits must be"):
        cm.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="positive int"):
        ConfusionMatrix(0)


def test_per_class_table_lists_every_class():
    from rich.console import Console

    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    res = cm.compute()
    console = Console(record=True, width=100)
    console.print(per_class_table(res, ["sky", "road", "car"], confusion=cm.matrix_cpu()))
    text = console.export_text()
    assert "sky" in text and "road" in text and "car" in text and "—" in text
    assert "mIoU 1.0000" in text
    assert math.isclose(res["mIoU"], 1.0)
