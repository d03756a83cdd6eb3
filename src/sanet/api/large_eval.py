"""``sanet eval`` on images too large to hold: the confusion matrix accumulated block by block,
image and mask read lazily (docs/large-images.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sanet.errors import DataError
from sanet.inference.raster import LabelSource, open_raster, raster_size
from sanet.inference.tiled import confusion_tiled
from sanet.metrics import ConfusionMatrix

logger = logging.getLogger(__name__)


def _labelled(dataset: Any) -> Any:
    """The dataset that maps raw mask values (a fold's underlying dataset), or ``None``."""
    for d in (dataset, getattr(dataset, "dataset", None)):
        if d is not None and hasattr(d, "map_labels") and hasattr(d, "label_map"):
            return d
    return None


def is_large(dataset: Any, index: int, tile_above: float | None) -> bool:
    """Whether sample ``index`` is an image file above ``tile_above`` megapixels that can be
    streamed (a dataset of files, without transforms)."""
    if tile_above is None or not hasattr(dataset, "files") or _labelled(dataset) is None:
        return False
    if getattr(dataset, "transforms", None) is not None:
        return False
    try:
        image = Path(dataset.files(index)[0])
        if not image.is_file():
            return False  # a generated dataset (synthetic), or a missing file named later
        height, width = raster_size(image)
    except Exception:
        return False  # the whole-image reader names the problem
    return height * width > tile_above * 1e6


def stream_pair(
    model: Any, dataset: Any, index: int, cm: ConfusionMatrix, protocol: Any, device: Any
) -> None:
    """Add sample ``index`` to ``cm`` block by block; its mask values go through the dataset's
    own label map (``map_labels``), so the metrics mean what they mean for small images."""
    image_path, mask_path = dataset.files(index)
    labelled = _labelled(dataset)
    with open_raster(image_path) as source:
        labels = LabelSource(mask_path)
        try:
            if (labels.height, labels.width) != (source.height, source.width):
                raise DataError(
                    mask_path,
                    f"mask is {labels.width}×{labels.height} (W×H) but its image {image_path} "
                    f"is {source.width}×{source.height}; image and mask must have the same size",
                    "re-export the mask at the image's size, or remove the pair",
                )
            logger.info(
                "%s: %d×%d px, evaluated block by block",
                Path(image_path).name,
                source.width,
                source.height,
            )
            confusion_tiled(
                model,
                source,
                lambda rows, cols: labelled.map_labels(labels.read(rows, cols), mask_path),
                cm,
                protocol,
                device=device,
            )
        finally:
            labels.close()


def stream_large(
    model: Any,
    dataset: Any,
    indices: list[int],
    cm: ConfusionMatrix,
    protocol: Any,
    device: Any,
    done: list[int],
    failed: list[str],
    bar: Any,
    task: Any,
) -> None:
    """Add the samples ``indices`` to ``cm`` one by one (:func:`stream_pair`); each goes to
    ``done`` or, unreadable, to ``failed``, and advances the progress task."""
    for i in indices:
        try:
            stream_pair(model, dataset, i, cm, protocol, device)
            done.append(i)
        except (DataError, FileNotFoundError) as err:
            failed.append(str(err))
        bar.advance(task)
