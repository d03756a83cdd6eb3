"""One builder per on-disk layout (docs/datasets.md): each finds the files of a split and
returns a :class:`~sanet.data.datasets.SegmentationDataset` with the layout's classes, palette
and label mapping (``classes.py``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sanet.data import classes as C
from sanet.data.datasets import SegmentationDataset
from sanet.data.io import verb_call
from sanet.data.splits import read_split_list, train_aug_ids
from sanet.errors import NotFoundError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- layout helpers


def find_root(root: str | os.PathLike, subdirs: Sequence[str], marker: str, kind: str) -> Path:
    """The first of ``root/<sub>`` that holds ``marker``; FileNotFoundError naming the layout."""
    root = Path(root).expanduser()
    for sub in subdirs:
        cand = root / sub if sub else root
        if (cand / marker).exists():
            return cand
    tried = ", ".join(str(root / s) if s else str(root) for s in subdirs)
    raise NotFoundError(
        f"{kind}: no {marker!r} found under {tried}. Fix: point the root at the folder that "
        f"holds {marker!r} (layouts in docs/datasets.md)."
    )


def _split_pairs(
    base: Path, stems: list[str], image_dir: str, mask_dir: str, image_ext: str, kind: str
) -> list[tuple[str, str]]:
    pairs = [
        (str(base / image_dir / f"{s}{image_ext}"), str(base / mask_dir / f"{s}.png"))
        for s in stems
    ]
    return pairs


# --------------------------------------------------------------------------- builders


def build_voc(root: str | os.PathLike, split: str = "train", **kw) -> SegmentationDataset:
    """PASCAL VOC 2012: ``VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``."""
    base = find_root(root, ["", "VOC2012", "VOCdevkit/VOC2012"], "SegmentationClass", "voc")
    stems = read_split_list(
        base / "ImageSets/Segmentation" / f"{split}.txt",
        "voc",
        "use split train, val or trainval (the test split has no public masks)",
    )
    pairs = _split_pairs(base, stems, "JPEGImages", "SegmentationClass", ".jpg", "voc")
    return SegmentationDataset(
        pairs, class_names=C.VOC_CLASSES, palette=C.voc_palette(21), name=f"voc:{split}", **kw
    )


_VOC_DIRS = ["", "VOC2012", "VOCdevkit/VOC2012"]
_SBD_DIRS = ["benchmark_RELEASE/dataset", "SBD/dataset", "SBD", "dataset", ""]


def _prepare_voc_aug_call() -> str:
    """The voc-aug converter as the caller runs it (``sanet prepare voc-aug ...``)."""
    return verb_call("prepare", "voc-aug", sbd="SBD", voc="VOC2012")


def build_voc_aug(root: str | os.PathLike, split: str = "train", **kw) -> SegmentationDataset:
    """VOC 2012 + SBD; ``train`` (= ``train_aug``) is the standard 10,582-image list, ``val``
    VOC's 1,449.

    Reads ``SegmentationClassAug`` PNGs + ``train_aug.txt`` (``sanet prepare voc-aug``) when
    present; otherwise, when ``root`` holds both VOC2012 and SBD's ``benchmark_RELEASE/dataset``,
    the SBD ``cls/*.mat`` files directly (VOC's own masks where VOC has them).
    """
    try:
        base = find_root(root, _VOC_DIRS, "SegmentationClassAug", "voc-aug")
    except FileNotFoundError:
        pairs = _voc_aug_from_sbd(Path(root).expanduser(), split)
    else:
        list_name = {"train": "train_aug", "trainval": "trainval_aug"}.get(split, split)
        stems = read_split_list(
            base / "ImageSets/Segmentation" / f"{list_name}.txt",
            "voc-aug",
            f"write it with {_prepare_voc_aug_call()}",
        )
        pairs = _split_pairs(base, stems, "JPEGImages", "SegmentationClassAug", ".jpg", "voc-aug")
    return SegmentationDataset(
        pairs,
        class_names=C.VOC_CLASSES,
        palette=C.voc_palette(21),
        name=f"voc-aug:{split}",
        **kw,
    )


def _voc_aug_from_sbd(root: Path, split: str) -> list[tuple[str, str]]:
    """(image, mask) pairs of the train_aug / val lists straight from VOC2012 + SBD folders."""
    fix = (
        f"write it with {_prepare_voc_aug_call()}, or put VOCdevkit/VOC2012 and "
        "benchmark_RELEASE/dataset under one root"
    )
    voc = next((root / d for d in _VOC_DIRS if (root / d / "SegmentationClass").is_dir()), None)
    sbd = next((root / d for d in _SBD_DIRS if (root / d / "cls").is_dir()), None)
    if voc is None or sbd is None:
        raise NotFoundError(
            f"voc-aug: no SegmentationClassAug under {root}, and no VOC2012 + SBD pair to read "
            f"the .mat files from. Fix: {fix}."
        )
    lists = voc / "ImageSets/Segmentation"
    voc_val = read_split_list(lists / "val.txt", "voc-aug", fix)
    if split in ("train", "train_aug"):
        stems = train_aug_ids(
            read_split_list(sbd / "train.txt", "voc-aug", fix),
            read_split_list(sbd / "val.txt", "voc-aug", fix),
            read_split_list(lists / "train.txt", "voc-aug", fix),
            voc_val,
        )
    elif split == "val":
        stems = voc_val
    else:
        raise UsageError(f"voc-aug: split {split!r} needs prepared lists; use train or val")
    pairs = []
    for s in stems:
        png = voc / "SegmentationClass" / f"{s}.png"
        mask = png if png.exists() else sbd / "cls" / f"{s}.mat"
        pairs.append((str(voc / "JPEGImages" / f"{s}.jpg"), str(mask)))
    return pairs


def build_pascal_context(
    root: str | os.PathLike, split: str = "train", **kw
) -> SegmentationDataset:
    """PASCAL-Context 59: VOC2010 ``JPEGImages`` + ``SegmentationClassContext`` 60-label PNGs.

    Labels: 0 (background) -> 255, 1..59 -> 0..58 (the paper ignores background).
    """
    base = find_root(
        root, ["", "VOC2010", "VOCdevkit/VOC2010"], "SegmentationClassContext", "pascal-context"
    )
    stems = read_split_list(
        base / "ImageSets/SegmentationContext" / f"{split}.txt",
        "pascal-context",
        "run `sanet prepare pascal-context` to write train.txt / val.txt",
    )
    pairs = _split_pairs(
        base, stems, "JPEGImages", "SegmentationClassContext", ".jpg", "pascal-context"
    )
    return SegmentationDataset(
        pairs,
        class_names=C.CONTEXT59_CLASSES,
        palette=C.voc_palette(60)[1:],
        label_map=C.reduce_zero_lut(59),
        name=f"pascal-context:{split}",
        **kw,
    )


def build_ade20k(root: str | os.PathLike, split: str = "train", **kw) -> SegmentationDataset:
    """ADE20K SceneParsing: ``ADEChallengeData2016/{images,annotations}/{training,validation}``.

    Labels: 0 ("other") -> 255, 1..150 -> 0..149.
    """
    base = find_root(root, ["", "ADEChallengeData2016"], "annotations", "ade20k")
    sub = {"train": "training", "val": "validation"}.get(split, split)
    mask_dir = base / "annotations" / sub
    if not mask_dir.is_dir():
        raise NotFoundError(f"ade20k: {mask_dir} not found. Fix: use split train or val.")
    pairs = []
    for mask in sorted(mask_dir.glob("*.png")):
        pairs.append((str(base / "images" / sub / f"{mask.stem}.jpg"), str(mask)))
    return SegmentationDataset(
        pairs,
        class_names=C.ADE20K_CLASSES,
        palette=C.voc_palette(151)[1:],
        label_map=C.reduce_zero_lut(150),
        name=f"ade20k:{split}",
        **kw,
    )


def build_cityscapes(root: str | os.PathLike, split: str = "train", **kw) -> SegmentationDataset:
    """Cityscapes fine: ``leftImg8bit/<split>/<city>/*`` + ``gtFine/<split>/<city>/*_labelIds``.

    Labels: the 34 labelIds -> 19 trainIds (cityscapesScripts), everything else -> 255.
    """
    base = find_root(root, ["", "cityscapes"], "gtFine", "cityscapes")
    image_dir = base / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise NotFoundError(
            f"cityscapes: {image_dir} not found. Fix: use split train, val or test and unpack "
            "leftImg8bit_trainvaltest.zip next to gtFine."
        )
    pairs = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = base / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((str(image), str(mask)))
    return SegmentationDataset(
        pairs,
        class_names=C.CITYSCAPES_CLASSES,
        palette=C.CITYSCAPES_PALETTE,
        label_map=C.cityscapes_lut(),
        name=f"cityscapes:{split}",
        **kw,
    )


def read_classes_txt(path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """``classes.txt``: one class per line, ``name`` or ``name R G B`` (all or none coloured)."""
    names, colours = [], []
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        parts = ln.rsplit(maxsplit=3)
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            names.append(parts[0].strip())
            colours.append(tuple(int(p) for p in parts[1:]))
        else:
            names.append(ln.strip())
    if colours and len(colours) != len(names):
        raise UsageError(f"{path}: give a colour for every class or for none")
    return names, (colours or None)  # type: ignore[return-value]


def build_folder(
    root: str | os.PathLike,
    split: str = "train",
    label_map: Mapping[int, int] | None = None,
    **kw,
) -> SegmentationDataset:
    """``images/<split>/*.{png,jpg}``, ``masks/<split>/<same stem>.png``, ``classes.txt``.

    Mask value k is class k (line k of ``classes.txt``) and 255 is ignore, unless
    ``label_map`` says otherwise: ``{255: 1}`` reads binary masks saved as 0/255 (255 = the
    object, class 1) and ``{1: 255}`` would ignore value 1 (docs/datasets.md).
    """
    base = Path(root).expanduser()
    classes_txt = base / "classes.txt"
    if not classes_txt.exists():
        raise NotFoundError(
            f"folder: {classes_txt} not found. Fix: write one class name per line (line k = "
            "mask value k); see docs/datasets.md."
        )
    names, colours = read_classes_txt(classes_txt)
    image_dir, mask_dir = base / "images" / split, base / "masks" / split
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise NotFoundError(
            f"folder: expected {image_dir} and {mask_dir}. Fix: use the layout "
            "images/<split>/ + masks/<split>/ with the same file stems."
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise NotFoundError(f"folder: no images in {image_dir}")
    pairs = [(str(p), str(mask_dir / f"{p.stem}.png")) for p in images]
    lut = None if label_map is None else C.remapped_lut(len(names), label_map, f"folder {base}")
    return SegmentationDataset(
        pairs, class_names=names, palette=colours, label_map=lut, name=f"folder:{split}", **kw
    )
