"""Pictures: index PNGs, overlays, metric plots and the paper's figures (Fig. 4, 5, 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sanet.viz.figures import (
    attention_maps,
    cosine_similarity_map,
    feature_point,
    plot_attention_maps,
    plot_figure5,
    plot_sweep_heatmap,
)
from sanet.viz.visualize import (
    colorize,
    default_palette,
    mask_to_pil,
    normalize_confusion,
    overlay,
    overlay_with_legend,
    plot_confusion_matrix,
    plot_per_class_iou,
    save_png,
)

PALETTE = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]


def test_default_palette_is_voc():
    pal = default_palette(4)
    assert pal == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]


def test_index_png_round_trips_ids_and_palette(tmp_path):
    mask = np.array([[0, 1, 2], [255, 1, 0]])
    path = save_png(mask_to_pil(mask, PALETTE), tmp_path / "m.png")
    im = Image.open(path)
    assert im.mode == "P" and im.size == (3, 2)
    assert np.array_equal(np.asarray(im), mask)  # indices, not colours
    assert im.getpalette()[:9] == [10, 20, 30, 200, 0, 0, 0, 200, 0]
    assert np.array_equal(np.asarray(im.convert("RGB"))[0, 1], [200, 0, 0])


def test_overlay_blends_and_keeps_ignore_pixels():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[1, 255], [2, 0]])
    out = overlay(image, mask, PALETTE, alpha=0.5)
    assert out[0, 0].tolist() == [150, 50, 50]  # (100 + 200) / 2, (100 + 0) / 2
    assert out[0, 1].tolist() == [100, 100, 100]  # ignore: the image shows through
    assert colorize(mask, PALETTE)[1, 0].tolist() == [0, 200, 0]
    with pytest.raises(ValueError, match="sizes differ"):
        overlay(image, np.zeros((3, 2), dtype=np.int64), PALETTE)


def test_overlay_with_legend_keeps_the_input_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (65, 97, 3), dtype=np.uint8)
    mask = np.zeros((65, 97), dtype=np.int64)
    mask[30:, 40:] = 2
    plain = overlay(image, mask, PALETTE)
    pic = overlay_with_legend(image, mask, ["sky", "road", "car"], PALETTE)
    assert pic.size == (97, 65) and pic.mode == "RGB"
    arr = np.asarray(pic)
    assert not np.array_equal(arr[:20, :40], plain[:20, :40])  # the legend is drawn top-left
    assert np.array_equal(arr[40:, 60:], plain[40:, 60:])  # the rest is the overlay


def test_normalize_confusion_by_hand():
    m = torch.tensor([[3, 1], [0, 0]])
    np.testing.assert_allclose(normalize_confusion(m), [[0.75, 0.25], [0.0, 0.0]])


def test_metric_plots_are_pngs(tmp_path):
    names = ["sky", "road", "car"]
    a = plot_per_class_iou([0.5, None, 0.9], names, tmp_path / "iou.png")
    b = plot_confusion_matrix(
        torch.tensor([[5, 1, 0], [0, 0, 0], [2, 0, 9]]), names, tmp_path / "cm.png"
    )
    for path in (a, b):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_cosine_similarity_by_hand():
    f = torch.zeros(2, 1, 3)
    f[:, 0, 0] = torch.tensor([1.0, 0.0])
    f[:, 0, 1] = torch.tensor([1.0, 1.0])  # 45°: cos = 1/√2
    # f[:, 0, 2] stays zero: similarity defined as 0, not NaN
    sim = cosine_similarity_map(f, 0, 0)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 2**-0.5, 0.0]]))


def test_feature_point_maps_pixels_to_cells():
    assert feature_point((0, 0), (65, 97), (9, 13)) == (0, 0)
    assert feature_point((96, 64), (65, 97), (9, 13)) == (8, 12)
    assert feature_point((48, 32), (64, 96), (8, 12)) == (4, 6)


def test_attention_maps_of_a_tiny_sanet(tmp_path):
    from sanet import build_model

    torch.manual_seed(0)
    model = build_model("sanet", backbone="resnet18d", num_classes=3).eval()
    image = torch.randn(3, 65, 97)
    maps = attention_maps(model, image, (50, 20))
    assert set(maps) == {(1, "attention"), (1, "main"), (4, "attention"), (4, "main")}
    # By hand (float64 numpy) from the SA parts: the chosen pixel (X 50, Y 20) lies in feature
    # cell (⌊20·h/65⌋, ⌊50·w/97⌋); each position's cosine similarity to that cell's vector
    # (0 where a vector is all zero), resized bilinearly to the image for display.
    parts = model.attention_parts(image[None])
    for head in (1, 4):
        for kind, feats in zip(("attention", "main"), parts[head - 1], strict=True):
            f = feats[0].double().numpy()  # (C, h, w)
            _, h, w = f.shape
            ref = f[:, 20 * h // 65, 50 * w // 97]
            norms = np.linalg.norm(f, axis=0) * np.linalg.norm(ref)
            dots = np.tensordot(ref, f, axes=(0, 0))
            sim = np.where(norms > 0, dots / np.maximum(norms, 1e-300), 0.0)
            up = F.interpolate(torch.from_numpy(sim)[None, None], size=(65, 97), mode="bilinear")
            np.testing.assert_allclose(maps[(head, kind)], up[0, 0].numpy(), atol=1e-5)
    assert parts[0][0].shape[-2:] == (17, 25)  # head 1 at stride 4: cell (5, 12), not (20, 50)
    with pytest.raises(ValueError, match="outside"):
        attention_maps(model, image, (97, 0))
    fcn = build_model("fcn", backbone="resnet18d", num_classes=3).eval()
    with pytest.raises(ValueError, match="SANet"):
        attention_maps(fcn, image, (1, 1))
    rgb = np.zeros((65, 97, 3), dtype=np.uint8)
    assert plot_attention_maps(rgb, maps, (50, 20), tmp_path / "fig6.png").is_file()


def test_figure5_and_sweep_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (45, 45, 3), dtype=np.uint8) for _ in range(2)]
    masks = [rng.integers(0, 3, (45, 45)) for _ in range(2)]
    path = plot_figure5(imgs, masks, masks, masks, tmp_path / "fig5.png", PALETTE)
    with Image.open(path) as im:
        assert im.size[0] > im.size[1]  # as in the paper: two example rows, four columns
    grid = np.array([[0.5, 0.6], [0.7, 0.4]])
    assert plot_sweep_heatmap([0.2, 0.4], [0.6, 0.8], grid, tmp_path / "fig4.png").is_file()
    with pytest.raises(ValueError, match="does not match"):
        plot_sweep_heatmap([0.2], [0.6, 0.8], grid, tmp_path / "x.png")


def test_sweep_collects_a_grid_and_resumes(tmp_path):
    from sanet.experiments.sweep import sweep_loss_weights

    calls = []

    def fake_train(alpha, beta, run_dir):
        calls.append((alpha, beta, run_dir.name))
        if len(calls) == 3 and not (tmp_path / "crashed").exists():
            (tmp_path / "crashed").touch()
            raise KeyboardInterrupt  # the third run is interrupted
        return alpha + 10 * beta

    with pytest.raises(KeyboardInterrupt):
        sweep_loss_weights([0.2, 0.4], [0.6, 0.8], fake_train, tmp_path)
    assert len(calls) == 3
    grid = sweep_loss_weights([0.2, 0.4], [0.6, 0.8], fake_train, tmp_path)
    # the two finished runs were not trained again; the interrupted one and the last were
    assert [c[2] for c in calls[3:]] == ["alpha0.4_beta0.6", "alpha0.4_beta0.8"]
    np.testing.assert_allclose(grid, [[6.2, 8.2], [6.4, 8.4]])
    assert (tmp_path / "fig4.png").is_file() and (tmp_path / "sweep.json").is_file()
