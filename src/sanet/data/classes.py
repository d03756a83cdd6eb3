"""Class names, palettes and label mappings of the supported datasets (docs/datasets.md).

Each table is data, not logic: a newcomer checks it against the dataset's official release
(the tests hold independent copies typed from those sources).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sanet.conventions import IGNORE_INDEX
from sanet.errors import UsageError


def _names(text: str) -> list[str]:
    """A comma-separated table of names (names may hold spaces: "chest of drawers")."""
    return [name.strip() for name in text.split(",") if name.strip()]


VOC_CLASSES = _names("""
    background, aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, diningtable,
    dog, horse, motorbike, person, pottedplant, sheep, sofa, train, tvmonitor
""")

# PASCAL-Context 59 classes in the order of the standard 60-label PNGs (1..59; 0 = background).
# This is the order of their ids in the official 459-class labels.txt (alphabetical).
CONTEXT59_CLASSES = _names("""
    aeroplane, bag, bed, bedclothes, bench, bicycle, bird, boat, book, bottle, building, bus,
    cabinet, car, cat, ceiling, chair, cloth, computer, cow, cup, curtain, dog, door, fence, floor,
    flower, food, grass, ground, horse, keyboard, light, motorbike, mountain, mouse, person, plate,
    platform, pottedplant, road, rock, sheep, shelves, sidewalk, sign, sky, snow, sofa, table,
    track, train, tree, truck, tvmonitor, wall, water, window, wood
""")

# ADE20K SceneParsing (ADEChallengeData2016) 150 classes, ids 1..150 in the PNGs (0 = other).
ADE20K_CLASSES = _names("""
    wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk,
    person, earth, door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf,
    house, sea, mirror, rug, field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub,
    railing, cushion, base, box, column, signboard, chest of drawers, counter, sand, sink,
    skyscraper, fireplace, refrigerator, grandstand, path, stairs, runway, case, pool table,
    pillow, screen door, stairway, river, bridge, bookcase, blind, coffee table, toilet, flower,
    book, hill, bench, countertop, stove, palm, kitchen island, computer, swivel chair, boat, bar,
    arcade machine, hovel, bus, towel, light, truck, tower, chandelier, awning, streetlight, booth,
    television receiver, airplane, dirt track, apparel, pole, land, bannister, escalator, ottoman,
    bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything,
    swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food,
    step, tank, trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket,
    sculpture, hood, sconce, vase, traffic light, tray, ashcan, fan, pier, crt screen, plate,
    monitor, bulletin board, shower, radiator, glass, clock, flag
""")

# Cityscapes: the 19 evaluated classes (trainIds 0..18) with their official colours.
CITYSCAPES_CLASSES = _names("""
    road, sidewalk, building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain,
    sky, person, rider, car, truck, bus, train, motorcycle, bicycle
""")
CITYSCAPES_PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]
# labelId -> trainId, from cityscapesScripts/helpers/labels.py (everything else is ignored).
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def voc_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved class id), extended to any ``n``."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def identity_lut(num_classes: int) -> np.ndarray:
    """Raw value k -> k for 0..K-1, 255 -> 255, anything else -> -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def remapped_lut(num_classes: int, remap: Mapping[int, int], where: str) -> np.ndarray:
    """:func:`identity_lut` with some raw values sent elsewhere, e.g. ``{255: 1}`` for binary
    masks saved as 0/255 (255 is then class 1, not ignore).

    Raises:
        ValueError: a raw value outside 0..255 or a target outside 0..K−1 and 255.
    """
    lut = identity_lut(num_classes)
    if not isinstance(remap, Mapping):
        raise UsageError(
            f"{where}: label_map must map raw mask values to class ids, e.g. {{255: 1}}; got "
            f"{remap!r}."
        )
    for raw, target in remap.items():
        raw_v, target_v = _label_value(raw), _label_value(target)
        if raw_v is None or not 0 <= raw_v <= 255:
            raise UsageError(
                f"{where}: label_map key {raw!r} is not a mask value 0..255; e.g. {{255: 1}} "
                "reads 255 as class 1."
            )
        if target_v is None or not (0 <= target_v < num_classes or target_v == IGNORE_INDEX):
            raise UsageError(
                f"{where}: label_map sends {raw_v} to {target!r}, which is neither a class id "
                f"0..{num_classes - 1} (the lines of classes.txt) nor {IGNORE_INDEX} (ignore)."
            )
        lut[raw_v] = target_v
    return lut


def _label_value(value: object) -> int | None:
    """An int (or a string of digits, as JSON keys are) as a label value; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def reduce_zero_lut(num_classes: int) -> np.ndarray:
    """Raw 0 -> 255 (ignore), 1..K -> 0..K-1, 255 -> 255, anything else -> -1 (Context, ADE20K)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def cityscapes_lut() -> np.ndarray:
    """labelIds 0..33 (and -1 stored as 255) -> trainIds 0..18 or 255; anything else -> -1."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:34] = IGNORE_INDEX
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def ignore_borders(label: np.ndarray) -> np.ndarray:
    """Set a 2-pixel band across every label change to 255, like VOC's object outlines.

    Shape: label ``(H, W)`` integer ids → a copy with ``IGNORE_INDEX`` on the band.
    """
    edge = np.zeros(label.shape, bool)
    dx = label[:, 1:] != label[:, :-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    dy = label[1:, :] != label[:-1, :]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    out = label.copy()
    out[edge] = IGNORE_INDEX
    return out
