"""The published tables sanet's data code carries, against copies typed here from their sources.

Each table below was typed from the official release, not from sanet's own code:

- Cityscapes: ``cityscapesScripts/cityscapesscripts/helpers/labels.py`` (name, labelId,
  trainId, colour); every labelId 0..33 is checked, not only the 19 evaluated classes.
- PASCAL Context: the 59 classes' ids in the 459-class ``labels.txt`` of the detail API (also
  the list in MMSegmentation's ``tools/dataset_converters/pascal_context.py``) with their names.
- ImageNet statistics: torchvision's documented ``transforms`` of ``ResNet50_Weights`` and timm's
  ``IMAGENET_DEFAULT_MEAN``/``STD`` (two independent packages).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanet.conventions import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from sanet.data import classes
from sanet.data.formats import CONTEXT59_IDS
from sanet.data.transforms import normalize_image

# name | labelId | trainId | colour — cityscapesScripts labels.py; trainId 255 = not evaluated.
CITYSCAPES = [
    (name.strip(), int(label), int(train), tuple(int(c) for c in colour.split()))
    for name, label, train, colour in (
        row.split("|")
        for row in """
    unlabeled             |  0 | 255 |   0   0   0
    ego vehicle           |  1 | 255 |   0   0   0
    rectification border  |  2 | 255 |   0   0   0
    out of roi            |  3 | 255 |   0   0   0
    static                |  4 | 255 |   0   0   0
    dynamic               |  5 | 255 | 111  74   0
    ground                |  6 | 255 |  81   0  81
    road                  |  7 |   0 | 128  64 128
    sidewalk              |  8 |   1 | 244  35 232
    parking               |  9 | 255 | 250 170 160
    rail track            | 10 | 255 | 230 150 140
    building              | 11 |   2 |  70  70  70
    wall                  | 12 |   3 | 102 102 156
    fence                 | 13 |   4 | 190 153 153
    guard rail            | 14 | 255 | 180 165 180
    bridge                | 15 | 255 | 150 100 100
    tunnel                | 16 | 255 | 150 120  90
    pole                  | 17 |   5 | 153 153 153
    polegroup             | 18 | 255 | 153 153 153
    traffic light         | 19 |   6 | 250 170  30
    traffic sign          | 20 |   7 | 220 220   0
    vegetation            | 21 |   8 | 107 142  35
    terrain               | 22 |   9 | 152 251 152
    sky                   | 23 |  10 |  70 130 180
    person                | 24 |  11 | 220  20  60
    rider                 | 25 |  12 | 255   0   0
    car                   | 26 |  13 |   0   0 142
    truck                 | 27 |  14 |   0   0  70
    bus                   | 28 |  15 |   0  60 100
    caravan               | 29 | 255 |   0   0  90
    trailer               | 30 | 255 |   0   0 110
    train                 | 31 |  16 |   0  80 100
    motorcycle            | 32 |  17 |   0   0 230
    bicycle               | 33 |  18 | 119  11  32
""".strip().splitlines()
    )
]

# (id in the 459-class labels.txt, name) of PASCAL Context's 59 classes, in label order 1..59.
CONTEXT59 = [
    (int(i), name)
    for i, name in (
        pair.split()
        for pair in """
    2 aeroplane, 9 bag, 18 bed, 19 bedclothes, 22 bench, 23 bicycle, 25 bird, 31 boat, 33 book,
    34 bottle, 44 building, 45 bus, 46 cabinet, 59 car, 65 cat, 68 ceiling, 72 chair, 80 cloth,
    85 computer, 98 cow, 104 cup, 105 curtain, 113 dog, 115 door, 144 fence, 158 floor, 159 flower,
    162 food, 187 grass, 189 ground, 207 horse, 220 keyboard, 232 light, 258 motorbike,
    259 mountain, 260 mouse, 284 person, 295 plate, 296 platform, 308 pottedplant, 324 road,
    326 rock, 347 sheep, 349 shelves, 354 sidewalk, 355 sign, 360 sky, 366 snow, 368 sofa,
    397 table, 415 track, 416 train, 420 tree, 424 truck, 427 tvmonitor, 440 wall, 445 water,
    454 window, 458 wood
""".split(",")
    )
]

VOC = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()


def test_cityscapes_label_ids_map_to_the_official_train_ids() -> None:
    lut = classes.cityscapes_lut()
    for name, label_id, train_id, _ in CITYSCAPES:
        assert lut[label_id] == train_id, f"{name} (labelId {label_id})"
    assert lut[IGNORE_INDEX] == IGNORE_INDEX  # license plate (-1) is stored as 255
    assert (lut[34:255] == -1).all()  # anything else is not a Cityscapes label


def test_cityscapes_classes_and_colours_are_the_official_ones() -> None:
    evaluated = sorted((t, n, c) for n, _, t, c in CITYSCAPES if t != 255)
    assert [n for _, n, _ in evaluated] == classes.CITYSCAPES_CLASSES
    assert [c for _, _, c in evaluated] == [tuple(c) for c in classes.CITYSCAPES_PALETTE]


def test_context59_ids_and_names_follow_labels_txt() -> None:
    assert [i for i, _ in CONTEXT59] == CONTEXT59_IDS
    assert [n for _, n in CONTEXT59] == classes.CONTEXT59_CLASSES


def test_context59_label_table_maps_every_id() -> None:
    from sanet.data.formats import context_lut

    lut = context_lut(CONTEXT59_IDS)
    for label, (old_id, name) in enumerate(CONTEXT59, start=1):
        assert lut[old_id] == label, name
    others = np.setdiff1d(np.arange(len(lut)), [i for i, _ in CONTEXT59])
    assert (lut[others] == 0).all()  # the other 400 classes are background (later ignored)


def test_voc_classes() -> None:
    assert classes.VOC_CLASSES == VOC


def test_imagenet_statistics_are_torchvisions_and_timms() -> None:
    import timm.data
    from torchvision.models import ResNet50_Weights

    preset = ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert list(IMAGENET_MEAN) == list(preset.mean) == list(timm.data.IMAGENET_DEFAULT_MEAN)
    assert list(IMAGENET_STD) == list(preset.std) == list(timm.data.IMAGENET_DEFAULT_STD)


def test_normalisation_by_hand() -> None:
    """One pixel (R, G, B) = (255, 0, 128) through the formula with the published numbers."""
    pixel = torch.tensor([255, 0, 128], dtype=torch.uint8).view(3, 1, 1)
    want = [(255 / 255 - 0.485) / 0.229, (0 / 255 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert normalize_image(pixel).flatten().tolist() == pytest.approx(want, abs=1e-6)
