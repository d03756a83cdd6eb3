"""Segmentation datasets: one class that reads (image, mask) file pairs, one builder per layout.

Every dataset yields ``(image uint8 (3, H, W), mask int64 (H, W))`` with class ids 0..K-1 and
255 = ignore, or ``transforms(image, mask)`` when transforms are given. The raw values stored
in a dataset's mask files are mapped to these ids by a 256-entry lookup table (``label_map``),
so each layout's convention (Context background → 255, ADE20K 0 → 255, Cityscapes labelIds →
trainIds) is one line of data in ``classes.py``.

Layouts are described in docs/datasets.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sanet.data import classes as C
from sanet.data.io import DEFAULT_MAX_PIXELS, DataError, load_image, load_mask

log = logging.getLogger(__name__)

Transforms = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegmentationDataset(Dataset):
    """(image, mask) pairs on disk, mapped to ids 0..K-1 and 255 by ``label_map``.

    Args:
        pairs: (image path, mask path) per sample.
        class_names: K names; ``num_classes = len(class_names)``.
        palette: K RGB colours for drawing masks.
        label_map: (256,) int array, raw mask value -> class id, 255 (ignore) or -1 (invalid).
        transforms: called as ``transforms(image, mask)`` on every sample.
        name: for messages, e.g. ``"voc:val"``.
        exif_transpose: apply each file's EXIF orientation (image and mask alike).
        max_pixels: refuse larger images (decompression bombs).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]] | None = None,
        label_map: np.ndarray | None = None,
        transforms: Transforms | None = None,
        name: str = "dataset",
        exif_transpose: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.pairs = [(str(i), str(m)) for i, m in pairs]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = list(palette) if palette is not None else C.voc_palette(self.num_classes)
        if len(self.palette) != self.num_classes:
            raise ValueError(
                f"{name}: palette has {len(self.palette)} colours for {self.num_classes} classes"
            )
        self.label_map = C.identity_lut(self.num_classes) if label_map is None else label_map
        self.transforms = transforms
        self.name = name
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.num_classes} classes)"
        )

    def files(self, index: int) -> tuple[str, str]:
        """(image path, mask path) of sample ``index``, to name the files of a bad batch."""
        return self.pairs[index]

    def read_image(self, index: int) -> np.ndarray:
        """Decoded image (H, W, 3) uint8 of sample ``index``."""
        kw = {"exif_transpose": self.exif_transpose, "max_pixels": self.max_pixels}
        return load_image(self.pairs[index][0], **kw)

    def read_mask(self, index: int) -> np.ndarray:
        """Raw mask values (H, W) uint8 of sample ``index``, before ``label_map``."""
        kw = {"exif_transpose": self.exif_transpose, "max_pixels": self.max_pixels}
        return load_mask(self.pairs[index][1], **kw)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded image (H, W, 3) uint8 and raw mask values (H, W) uint8, before mapping."""
        return self.read_image(index), self.read_mask(index)

    def map_labels(self, raw: np.ndarray, mask_path: str) -> np.ndarray:
        """Raw mask values -> int64 ids 0..K-1 / 255; raises ``DataError`` on unknown values."""
        ids = self.label_map[raw]
        if ids.min(initial=0) < 0:
            bad = np.unique(raw[ids < 0])
            raise DataError(
                mask_path,
                f"mask holds values {bad[:10].tolist()} that are not labels of {self.name} "
                f"(expected {_describe_lut(self.label_map)})",
                "check the dataset kind and num_classes, re-run `sanet prepare`, and run "
                "`sanet check-data` to list every bad file",
            )
        return ids.astype(np.int64)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated sample: (image uint8 (3, H, W), mask int64 (H, W))."""
        image, raw = self.load_raw(index)
        image_path, mask_path = self.pairs[index]
        if image.shape[:2] != raw.shape:
            raise DataError(
                mask_path,
                f"mask is {raw.shape[1]}×{raw.shape[0]} (W×H) but its image {image_path} is "
                f"{image.shape[1]}×{image.shape[0]}; image and mask must have the same size"
                + _exif_hint(image_path, raw.shape, self.exif_transpose),
                "re-export the mask at the image's size, or remove the pair",
            )
        mask = self.map_labels(raw, mask_path)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image_t, torch.from_numpy(mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask


def _describe_lut(lut: np.ndarray) -> str:
    valid = np.flatnonzero(lut >= 0)
    runs, start = [], valid[0]
    for a, b in zip(valid, [*valid[1:], None], strict=True):
        if b is None or b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}..{a}")
            start = b
    return "raw values " + ", ".join(runs)


def _exif_hint(image_path: str, mask_hw: tuple[int, ...], exif_transpose: bool) -> str:
    """Say so when the sizes would match after applying the image's EXIF rotation."""
    from PIL import Image

    from sanet.data.io import exif_orientation

    try:
        with Image.open(image_path) as im:
            orientation, (w, h) = exif_orientation(im), im.size
    except Exception:
        return ""
    if orientation in (5, 6, 7, 8) and (w, h) == (mask_hw[0], mask_hw[1]) and not exif_transpose:
        return (
            f" (the image has EXIF orientation {orientation}: rotated it would match; pass "
            "exif_transpose=True if the masks were drawn on the rotated view)"
        )
    return ""


# --------------------------------------------------------------------------- layout helpers


def find_root(root: str | os.PathLike, subdirs: Sequence[str], marker: str, kind: str) -> Path:
    """The first of ``root/<sub>`` that holds ``marker``; FileNotFoundError naming the layout."""
    root = Path(root).expanduser()
    for sub in subdirs:
        cand = root / sub if sub else root
        if (cand / marker).exists():
            return cand
    tried = ", ".join(str(root / s) if s else str(root) for s in subdirs)
    raise FileNotFoundError(
        f"{kind}: no {marker!r} found under {tried}. Fix: point the root at the folder that "
        f"holds {marker!r} (layouts in docs/datasets.md)."
    )


def read_split_list(path: Path, kind: str, fix: str) -> list[str]:
    """Stems listed one per line (blank lines and extra columns ignored)."""
    if not path.exists():
        raise FileNotFoundError(f"{kind}: split list {path} not found. Fix: {fix}")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise ValueError(f"{kind}: split list {path} is empty. Fix: {fix}")
    return ids


def check_pairs_exist(pairs: list[tuple[str, str]], kind: str) -> None:
    """Fail early, with a count and examples, when listed files are missing."""
    missing = [p for pair in pairs for p in pair if not os.path.exists(p)]
    if missing:
        examples = ", ".join(missing[:3])
        raise FileNotFoundError(
            f"{kind}: {len(missing)} listed files are missing (e.g. {examples}). Fix: complete "
            "the download / re-run `sanet prepare`, or remove the stems from the split list."
        )


def _split_pairs(
    base: Path, stems: list[str], image_dir: str, mask_dir: str, image_ext: str, kind: str
) -> list[tuple[str, str]]:
    pairs = [
        (str(base / image_dir / f"{s}{image_ext}"), str(base / mask_dir / f"{s}.png"))
        for s in stems
    ]
    check_pairs_exist(pairs, kind)
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
            "run `sanet prepare voc-aug --sbd SBD --voc VOC2012` to write it",
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
    from sanet.data.prepare import train_aug_ids

    fix = (
        "run `sanet prepare voc-aug --sbd SBD --voc VOC2012`, or put VOCdevkit/VOC2012 and "
        "benchmark_RELEASE/dataset under one root"
    )
    voc = next((root / d for d in _VOC_DIRS if (root / d / "SegmentationClass").is_dir()), None)
    sbd = next((root / d for d in _SBD_DIRS if (root / d / "cls").is_dir()), None)
    if voc is None or sbd is None:
        raise FileNotFoundError(
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
        raise ValueError(f"voc-aug: split {split!r} needs prepared lists; use train or val")
    pairs = []
    for s in stems:
        png = voc / "SegmentationClass" / f"{s}.png"
        mask = png if png.exists() else sbd / "cls" / f"{s}.mat"
        pairs.append((str(voc / "JPEGImages" / f"{s}.jpg"), str(mask)))
    check_pairs_exist(pairs, "voc-aug")
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
        raise FileNotFoundError(f"ade20k: {mask_dir} not found. Fix: use split train or val.")
    pairs = []
    for mask in sorted(mask_dir.glob("*.png")):
        pairs.append((str(base / "images" / sub / f"{mask.stem}.jpg"), str(mask)))
    check_pairs_exist(pairs, "ade20k")
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
        raise FileNotFoundError(
            f"cityscapes: {image_dir} not found. Fix: use split train, val or test and unpack "
            "leftImg8bit_trainvaltest.zip next to gtFine."
        )
    pairs = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = base / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((str(image), str(mask)))
    check_pairs_exist(pairs, "cityscapes")
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
        raise ValueError(f"{path}: give a colour for every class or for none")
    return names, (colours or None)  # type: ignore[return-value]


def build_folder(root: str | os.PathLike, split: str = "train", **kw) -> SegmentationDataset:
    """``images/<split>/*.{png,jpg}``, ``masks/<split>/<same stem>.png``, ``classes.txt``."""
    base = Path(root).expanduser()
    classes_txt = base / "classes.txt"
    if not classes_txt.exists():
        raise FileNotFoundError(
            f"folder: {classes_txt} not found. Fix: write one class name per line (line k = "
            "mask value k); see docs/datasets.md."
        )
    names, colours = read_classes_txt(classes_txt)
    image_dir, mask_dir = base / "images" / split, base / "masks" / split
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(
            f"folder: expected {image_dir} and {mask_dir}. Fix: use the layout "
            "images/<split>/ + masks/<split>/ with the same file stems."
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"folder: no images in {image_dir}")
    pairs = [(str(p), str(mask_dir / f"{p.stem}.png")) for p in images]
    check_pairs_exist(pairs, "folder")
    return SegmentationDataset(
        pairs, class_names=names, palette=colours, name=f"folder:{split}", **kw
    )
