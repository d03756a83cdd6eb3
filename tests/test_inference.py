"""Inference protocol: multi-scale + flip averaging, sliding window, sizes, the Predictor API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sanet.inference import EvalProtocol, Predictor, evaluate_pairs, predict_mask, predict_proba
from sanet.inference.protocol import combine_bands, window_starts


class SizeLogits(nn.Module):
    """Spatially constant logits that depend on the input height: [h/100, 0, -h/200]."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        n, _, h, w = x.shape
        logits = torch.tensor([h / 100, 0.0, -h / 200]).view(1, 3, 1, 1)
        return {"out": logits.expand(n, 3, h, w).clone()}


class RampLogits(nn.Module):
    """Logit of class 0 grows with the column index (x / 10); class 1 is 0. Not mirror-symmetric."""

    def forward(self, x):
        n, _, h, w = x.shape
        ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(n, 1, h, w) / 10
        return {"out": torch.cat([ramp, torch.zeros_like(ramp)], dim=1)}


def _softmax(v):
    e = np.exp(np.asarray(v) - np.max(v))
    return e / e.sum()


def test_ms_flip_averages_softmax_over_scales():
    model = SizeLogits()
    image = torch.randn(3, 60, 80)  # landscape: the long side (80) becomes 520·s
    protocol = EvalProtocol.paper_ms_flip()
    probs = predict_proba(model, image, protocol)
    assert probs.shape == (3, 60, 80)
    # By hand: at scale s the image is round(520 s) wide and round(60/80 · 520 s) high; windows
    # are at most 480 high. Probabilities (not logits) are averaged over the six scales.
    expected = np.zeros(3)
    for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        tile_h = min(480, round(0.75 * round(520 * s)))
        expected += _softmax([tile_h / 100, 0.0, -tile_h / 200]) / 6
    torch.testing.assert_close(probs, torch.tensor(expected).float().view(3, 1, 1).expand_as(probs))
    # every forward held originals and mirrors together: an even batch
    assert all(shape[0] % 2 == 0 for shape in model.calls)
    # logit averaging would give a different answer: the test can tell the two apart
    logit_avg = _softmax(
        np.mean(
            [
                [
                    min(480, round(0.75 * round(520 * s))) / 100,
                    0,
                    -min(480, round(0.75 * round(520 * s))) / 200,
                ]
                for s in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
            ],
            axis=0,
        )
    )
    assert not np.allclose(logit_avg, expected, atol=1e-4)


def test_flip_unmirrors_before_averaging():
    image = torch.randn(3, 40, 50)
    probs = predict_proba(RampLogits(), image, EvalProtocol(flip=True))
    x = np.arange(50)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731 - p(class 0) for logits [v, 0]
    want = 0.5 * (sig(x / 10) + sig((49 - x) / 10))
    torch.testing.assert_close(probs[0, 7], torch.tensor(want).float())
    no_flip = predict_proba(RampLogits(), image, EvalProtocol(flip=False))
    torch.testing.assert_close(no_flip[0, 7], torch.tensor(sig(x / 10)).float())


def test_window_starts_cover_and_end_at_the_border():
    assert window_starts(200, 96, 64) == [0, 64, 104]
    assert window_starts(260, 96, 64) == [0, 64, 128, 164]
    assert window_starts(96, 96, 64) == [0]
    assert window_starts(1000, 480, 320) == [0, 320, 520]


def _toy_fcn(kernel: int) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, kernel, padding=kernel // 2), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"out": self.net(x)}

    return Wrap().eval()


def test_sliding_window_equals_whole_image_for_pointwise_model():
    model = _toy_fcn(1)
    image = torch.randn(3, 200, 260)
    whole = model(image[None])["out"].softmax(1)[0]
    for batch in (1, 5):
        slid = predict_proba(
            model, image, EvalProtocol(crop_size=96, stride=64, window_batch=batch)
        )
        torch.testing.assert_close(slid, whole, atol=1e-6, rtol=1e-5)


def test_sliding_window_equals_whole_image_away_from_window_borders():
    model = _toy_fcn(3)  # receptive field 3×3: only pixels at an interior window edge differ
    image = torch.randn(3, 200, 260)
    whole = model(image[None])["out"].softmax(1)[0]
    slid = predict_proba(model, image, EvalProtocol(crop_size=96, stride=64))
    # windows: rows [0, 64, 104], cols [0, 64, 128, 164], size 96 (hand-computed above)
    bad = torch.zeros(200, 260, dtype=torch.bool)
    for y in (0, 64, 104):
        for x in (0, 64, 128, 164):
            for edge in (y, y + 95):
                if 0 < edge < 199:
                    bad[edge, x : x + 96] = True
            for edge in (x, x + 95):
                if 0 < edge < 259:
                    bad[y : y + 96, edge] = True
    good = ~bad
    assert good.float().mean() > 0.9
    torch.testing.assert_close(slid[:, good], whole[:, good], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(slid[:, bad], whole[:, bad], atol=1e-6)  # the check has teeth


def test_banded_resize_matches_interpolate():
    torch.manual_seed(1)
    maps = [torch.rand(3, 17, 23), torch.rand(3, 45, 97), torch.rand(3, 60, 31)]
    want = (
        sum(
            F.interpolate(m[None], size=(45, 97), mode="bilinear", align_corners=False)[0]
            for m in maps
        )
        / 3
    )
    got = torch.cat(combine_bands(maps, (45, 97), 7, lambda b: b), dim=1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_predict_mask_equals_argmax_of_proba_multiscale():
    model = _toy_fcn(3)
    image = torch.randn(3, 65, 97)
    protocol = EvalProtocol(
        scales=(0.75, 1.0, 1.5), flip=True, crop_size=64, stride=48, band_rows=9
    )
    probs = predict_proba(model, image, protocol)
    assert probs.shape == (4, 65, 97)
    torch.testing.assert_close(probs.sum(0), torch.ones(65, 97))
    assert torch.equal(predict_mask(model, image, protocol), probs.argmax(0))


def test_windows_of_equal_size_share_forwards_across_scales():
    # The paper's protocol on a 500×375 image (hand-computed from 520·s and the 480 window):
    # s = 0.5, 0.75, 1.0 give one 195×260, one 292×390 (375/500·390 = 292.5, rounded half to
    # even) and two 390×480 windows; s = 1.25, 1.5, 1.75 give 4 + 4 + 6 = 14 windows of
    # 480×480. With flips and 32 tiles per forward:
    model = SizeLogits()
    predict_proba(model, torch.randn(3, 375, 500), EvalProtocol.paper_ms_flip(window_batch=32))
    assert model.calls == [
        (2, 3, 195, 260),
        (2, 3, 292, 390),
        (4, 3, 390, 480),
        (28, 3, 480, 480),
    ]


def test_batching_windows_does_not_change_the_result():
    # One window (and its mirror) per forward against everything that fits in one forward;
    # fp32, a conv net whose windows overlap and whose scales share window sizes.
    model = _toy_fcn(3)
    image = torch.randn(3, 50, 37)
    kwargs = dict(base_size=72, crop_size=40, stride=24)
    one = predict_proba(model, image, EvalProtocol.paper_ms_flip(window_batch=1, **kwargs))
    many = predict_proba(model, image, EvalProtocol.paper_ms_flip(window_batch=64, **kwargs))
    torch.testing.assert_close(many, one)
    assert torch.equal(many.argmax(0), one.argmax(0))


def test_images_smaller_than_the_model_minimum_are_padded():
    out = predict_proba(_toy_fcn(3), torch.randn(2, 3, 20, 25))
    assert out.shape == (2, 4, 20, 25)


def test_protocol_rejects_bad_values():
    with pytest.raises(ValueError, match="stride"):
        EvalProtocol(crop_size=100, stride=200)
    with pytest.raises(ValueError, match="scales"):
        EvalProtocol(scales=())
    d = EvalProtocol.paper_ms_flip().to_dict()
    assert d["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and d["flip"] and d["base_size"] == 520
    assert (d["crop_size"], d["stride"]) == (480, 320)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from sanet import build_model

    torch.manual_seed(0)
    model = build_model("sanet", backbone="resnet18d", num_classes=5).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    names = ["bg", "a", "b", "c", "d"]
    model.save_pretrained(folder, metadata={"class_names": names})
    return folder


def test_predictor_keeps_odd_sizes_for_all_input_types(saved_model, tmp_path):
    import sanet

    pred = sanet.Predictor(saved_model)
    assert pred.class_names == ["bg", "a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)
    pil = Image.fromarray(rng.integers(0, 256, (65, 97, 3), dtype=np.uint8))
    path = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 256, (33, 71, 3), dtype=np.uint8)).save(path)
    assert pred.predict(arr).shape == (45, 45)
    assert pred.predict(pil).shape == (65, 97)
    mask = pred.predict(str(path))
    assert mask.shape == (33, 71) and mask.dtype == np.int64
    assert mask.min() >= 0 and mask.max() < 5
    proba = pred.predict_proba(pil)
    assert proba.shape == (5, 65, 97)
    np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(proba.argmax(0), pred.predict(pil))
    with pytest.raises(ValueError, match="uint8"):
        pred.predict(np.zeros((45, 45, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        pred.predict(tmp_path / "missing.png")


def test_evaluate_accumulates_confusion_over_a_dataset():
    from sanet.metrics import ConfusionMatrix

    model = _toy_fcn(3)
    g = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            torch.randint(0, 4, (h, w), generator=g),
        )
        for h, w in [(45, 45), (65, 97)]
    ]
    seen = []
    cm = evaluate_pairs(model, data, 4, on_image=lambda i, p: seen.append(p.shape))
    assert seen == [(45, 45), (65, 97)]
    ref = ConfusionMatrix(4)
    for image, mask in data:
        p = Predictor.from_model(model).predict(image)
        ref.update(torch.from_numpy(p)[None], mask[None])
    assert torch.equal(cm.matrix_cpu(), ref.matrix_cpu())
    assert math.isfinite(cm.compute()["mIoU"])


class LargestAllocation(TorchDispatchMode):
    """Records the largest new buffer (storage bytes) any tensor operation allocates; views
    and in-place results share an input's storage and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[bool, int] = {True: 0, False: 0}  # by "is floating point"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        shared = {t.untyped_storage().data_ptr() for t in inputs}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in shared:
                kind = t.is_floating_point()
                self.bytes[kind] = max(self.bytes[kind], t.untyped_storage().nbytes())
        return out


def test_large_image_memory_stays_bounded_by_base_size():
    """predict_mask never allocates a full-resolution probability map (protocol.py's promise):
    per-scale maps at base-size resolution, then bands of rows; only the id mask is full size."""
    from sanet.inference import scale_probs

    model = SizeLogits()
    H, W, K, band = 1500, 2000, 3, 100
    image = torch.zeros(3, H, W)  # 3 MP: the per-scale maps must not grow with it
    protocol = EvalProtocol(scales=(0.5, 1.0), base_size=64, band_rows=band)
    maps = scale_probs(model, image, protocol)
    assert [tuple(m.shape) for m in maps] == [(3, 24, 32), (3, 48, 64)]
    with LargestAllocation() as seen:
        mask = predict_mask(model, image, protocol)
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    assert seen.bytes[True] <= 4 * K * band * W  # one band of float32 probabilities
    assert seen.bytes[False] <= 8 * H * W  # the int64 mask itself
    with LargestAllocation() as full:  # the measurement can tell: predict_proba needs K·H·W
        predict_proba(model, image, protocol)
    assert full.bytes[True] >= 4 * K * H * W


def test_bf16_autocast_stays_close_and_float32():
    model = _toy_fcn(3)
    image = torch.randn(3, 45, 45)
    ref = predict_proba(model, image)
    amp = predict_proba(model, image, EvalProtocol(amp="bf16"))
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, atol=3e-2, rtol=0)
    with pytest.raises(ValueError, match="amp"):
        EvalProtocol(amp="fp8")
