"""``sanet.explain`` and ``sanet.figure5``: the paper's Fig. 6 (what the SA heads attend to at a
pixel) and Fig. 5 (input / ground truth / baseline / SANet panels) drawn into PNG files
(``sanet explain``, ``sanet figure5``). The pictures are computed by :mod:`sanet.viz.figures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sanet._files import ensure_new_file
from sanet.api.common import ProtocolArg, check_classes, device_of, open_dataset, protocol_of
from sanet.data import SegmentationDataset
from sanet.errors import UsageError, arg
from sanet.inference.predictor import Predictor, image_to_tensor, normalize
from sanet.models import registry
from sanet.viz.figures import attention_maps, plot_attention_maps, plot_figure5


def explain(
    checkpoint: str | Path,
    image: Any,
    point: tuple[int, int] | str,
    out: str | Path,
    *,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Fig. 6: how similar every position's SA features are to those at ``point``, for the
    attention and the main channels of SA heads 1 and 4, drawn over the image.

    Args:
        checkpoint: a SANet run directory, ``.pt`` checkpoint or ``save_pretrained`` folder.
        image: an image file, a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)``
            uint8 tensor.
        point: the pixel as ``(X, Y)`` = (column, row), or the text ``"X,Y"``.
        out: the PNG file to write (refused when it exists, unless ``overwrite``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (default: CUDA when there is one).

    Returns:
        ``out``.
    """
    xy = _point(point)
    out = ensure_new_file(out, arg("out"), overwrite, "figure.png")
    device = device_of(device)
    model, _ = registry.load_model(checkpoint, map_location="cpu")
    model = model.to(device).eval()
    pixels = image_to_tensor(image)
    maps = attention_maps(model, normalize(pixels, device), xy)
    return plot_attention_maps(pixels, maps, xy, out)


def figure5(
    checkpoint: str | Path,
    baseline: str | Path,
    data: str | SegmentationDataset,
    out: str | Path,
    *,
    split: str = "val",
    data_options: Mapping[str, Any] | None = None,
    indices: Sequence[int] | str = (0, 1, 2, 3),
    protocol: ProtocolArg = None,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Fig. 5: one row per image of ``data``: the input, the ground truth, the ``baseline``'s
    prediction and the ``checkpoint``'s, both under the checkpoint's protocol.

    Args:
        checkpoint: the SANet run (its ``eval`` section sets the protocol of both models).
        baseline: the baseline (FCN) run, on the same classes.
        data: ``"KIND:ROOT"`` (e.g. ``"voc:data/VOC2012"``, ``"synthetic"``) or a dataset.
        out: the PNG file to write (refused when it exists, unless ``overwrite``).
        data_options: dataset options, as a recipe's ``data.options``.
        indices: the images of ``split`` shown, in order (or the text ``"0,1,2,3"``).
        protocol: ``None``: the checkpoint's own; ``"paper"``, ``"single"`` or an
            :class:`~sanet.inference.EvalProtocol`.

    Returns:
        ``out``.
    """
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    out = ensure_new_file(out, arg("out"), overwrite, "figure.png")
    dataset = open_dataset(data, split, data_options)
    picked = _indices(indices, len(dataset))
    ours_p = Predictor(checkpoint, device=device, protocol=chosen)
    base_p = Predictor(baseline, device=device, protocol=chosen)
    check_classes(ours_p.model, dataset, checkpoint)
    check_classes(base_p.model, dataset, baseline)
    images, targets, base, ours = [], [], [], []
    for i in picked:
        image, mask = dataset[i]
        images.append(image)
        targets.append(mask.numpy())
        base.append(base_p.predict(image))
        ours.append(ours_p.predict(image))
    return plot_figure5(images, targets, base, ours, out, palette=dataset.palette)


def _point(point: tuple[int, int] | str) -> tuple[int, int]:
    """``(X, Y)`` from a pair or from ``"X,Y"``."""
    try:
        x, y = (int(v) for v in (point.split(",") if isinstance(point, str) else point))
    except (TypeError, ValueError):
        raise UsageError(
            f"{arg('point')} must be X,Y in pixels (column,row), got {point!r}."
        ) from None
    return x, y


def _indices(indices: Sequence[int] | str, n: int) -> list[int]:
    """The image indices asked for, each in ``0..n-1``."""
    try:
        picked = [
            int(float(v))
            for v in (indices.split(",") if isinstance(indices, str) else indices)
            if str(v).strip()
        ]
    except (TypeError, ValueError):
        raise UsageError(
            f"{arg('indices')} must be comma-separated numbers, got {indices!r}."
        ) from None
    if not picked or any(not 0 <= i < n for i in picked):
        raise UsageError(f"{arg('indices')} must lie in 0..{n - 1}, got {indices!r}.")
    return picked
