"""Converters from the official downloads to the layouts the loaders read (``sanet prepare``).

- ``prepare_voc_aug``: SBD ``cls/*.mat`` (``GTcls.Segmentation``) + VOC2012 →
  ``SegmentationClassAug/*.png`` and the standard 10,582-image ``train_aug.txt``
  (SBD train ∪ SBD val ∪ VOC train − VOC val).
- ``prepare_pascal_context``: PASCAL-Context ``trainval/*.mat`` (``LabelMap``, 459 classes) +
  the 59-class list → ``SegmentationClassContext/*.png`` with 0 = background, 1..59 the classes,
  and ``ImageSets/SegmentationContext/{train,val}.txt`` from VOC2010's Main split (4,998 / 5,105).
- ``prepare_synthetic``: the synthetic scenes written in the ``folder`` layout.

Downloads are the user's: each source may be the extracted folder or the archive itself; a known
archive's MD5 is checked before it is unpacked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from sanet._files import atomic_write_text
from sanet.data.classes import CONTEXT59_CLASSES, VOC_CLASSES, voc_palette
from sanet.data.family import draw_member
from sanet.data.formats import (
    CONTEXT59_IDS,
    context_lut,
    convert_context_mat,
    read_context59_list,
    read_sbd_mat,
    save_image,
    save_index_png,
)
from sanet.data.io import load_mask
from sanet.data.splits import read_split_list, train_aug_ids
from sanet.data.synthetic import get_generator, scene_rng
from sanet.errors import NotFoundError, OutputExistsError, UsageError, arg

log = logging.getLogger(__name__)
T = TypeVar("T")
# ``track(iterable, total, description)`` -> iterable; the CLI passes a rich progress bar.
Track = Callable[[Iterable[T], int, str], Iterable[T]]
_FULL = "use the complete official release (docs/datasets.md)"

# MD5 of the official archives: (checksum, strict). Sources: torchvision (VOC, SBD); the
# PASCAL-Context one is from a single third-party script, so a mismatch only warns.
KNOWN_MD5: dict[str, tuple[str, bool]] = {
    "VOCtrainval_11-May-2012.tar": ("6cd6e144f989b92b3379bac3b3de84fd", True),
    "VOCtrainval_03-May-2010.tar": ("da459979d0c395079b5c75ee67908abb", True),
    "benchmark.tgz": ("82b4d87ceb2ed10f6038a1cba92111cb", True),
    "trainval.tar.gz": ("df034edb2c12aa7d33b42b20bb1796e3", False),
}


def _no_track(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    return items


# --------------------------------------------------------------------------- sources


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_archive(path: Path, skip_checksum: bool = False) -> None:
    """Check a known archive's MD5; unknown names are only logged."""
    known = KNOWN_MD5.get(path.name)
    if known is None or skip_checksum:
        log.info("%s: no known checksum%s", path, " (skipped)" if skip_checksum else "")
        return
    expected, strict = known
    found = md5sum(path)
    if found == expected:
        log.info("%s: MD5 %s OK", path.name, found)
        return
    msg = (
        f"{path}: MD5 is {found}, expected {expected} for the official {path.name}. "
        "Fix: re-download it (the file is incomplete or different), or pass "
        f"{arg('skip_checksum', True)} if you trust this copy."
    )
    if strict:
        raise UsageError(msg)
    log.warning(msg)


def open_source(path: str | os.PathLike, workdir: Path, skip_checksum: bool = False) -> Path:
    """A folder as is, or an archive verified and unpacked into ``workdir/<archive name>``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NotFoundError(f"{path} not found. Fix: give the download's folder or archive.")
    if path.is_dir():
        return path
    if not tarfile.is_tarfile(path):
        raise UsageError(f"{path}: expected a folder or a .tar/.tgz archive, found another file")
    verify_archive(path, skip_checksum)
    dest = workdir / (path.name.split(".")[0] + "_extracted")
    if not (dest / ".complete").exists():
        log.info("unpacking %s into %s", path, dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")
        (dest / ".complete").touch()
    return dest


def _workdir(out: str | os.PathLike | None, main_source: str | os.PathLike) -> Path:
    """Where archives are unpacked: ``out``, else next to (or into) the main source."""
    if out:
        return Path(out).expanduser()
    src = Path(main_source).expanduser()
    return src if src.is_dir() else src.parent


def find_dir(base: Path, candidates: Sequence[str], marker: str, what: str) -> Path:
    """``base/<c>`` holding ``marker`` (also one level down, as archives often add a folder)."""
    for c in candidates:
        for root in (base / c, *(p / c for p in sorted(base.glob("*")) if p.is_dir())):
            if (root / marker).exists():
                return root
    raise NotFoundError(
        f"{what}: no {marker!r} under {base} (looked in {', '.join(candidates)}). Fix: give the "
        "folder of the official release (docs/datasets.md)."
    )


def _write_list(path: Path, stems: Iterable[str]) -> int:
    stems = list(stems)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(f"{s}\n" for s in stems))  # never a short list that loads
    return len(stems)


def _link_images(src: Path, out: Path) -> None:
    """Make ``out/JPEGImages`` point at the source images when writing elsewhere."""
    if out.resolve() == src.parent.resolve():
        return
    target = out / "JPEGImages"
    if not target.exists():
        target.symlink_to(src.resolve(), target_is_directory=True)


# --------------------------------------------------------------------------- VOC + SBD


def prepare_voc_aug(
    sbd: str | os.PathLike,
    voc: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    skip_checksum: bool = False,
    track: Track | None = None,
) -> dict[str, Any]:
    """Write ``SegmentationClassAug`` PNGs and ``train_aug.txt`` (see module doc).

    Masks of images that VOC annotates itself are VOC's (they keep the 255 borders); the others
    come from SBD (which has no ignore band). Returns a summary (counts, paths).
    """
    work = _workdir(out, voc)
    sbd_dir = find_dir(
        open_source(sbd, work, skip_checksum),
        ["", "dataset", "benchmark_RELEASE/dataset"],
        "cls",
        "SBD",
    )
    voc_dir = find_dir(
        open_source(voc, work, skip_checksum),
        ["", "VOC2012", "VOCdevkit/VOC2012"],
        "SegmentationClass",
        "VOC2012",
    )
    out_dir = Path(out).expanduser() if out else voc_dir
    voc_train, voc_val, train = _voc_aug_lists(sbd_dir, voc_dir)
    stems = sorted(set(train) | set(voc_val))
    counts = _write_voc_aug_masks(stems, sbd_dir, voc_dir, out_dir, track or _no_track)
    out_lists = out_dir / "ImageSets/Segmentation"
    n_train = _write_list(out_lists / "train_aug.txt", train)
    _write_list(out_lists / "val.txt", voc_val)
    _write_list(out_lists / "train.txt", voc_train)
    _link_images(voc_dir / "JPEGImages", out_dir)
    if n_train != 10_582:
        log.warning("train_aug has %d images; the standard list has 10,582", n_train)
    return {
        "root": str(out_dir),
        "train_aug": n_train,
        "val": len(voc_val),
        "masks_from_voc": counts["voc"],
        "masks_from_sbd": counts["sbd"],
        "classes": len(VOC_CLASSES),
    }


def _voc_aug_lists(sbd_dir: Path, voc_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """VOC's train and val lists and the train_aug list; refuses images missing from VOC."""
    lists = voc_dir / "ImageSets/Segmentation"
    voc_train, voc_val = (
        read_split_list(lists / "train.txt", "voc-aug", _FULL),
        read_split_list(lists / "val.txt", "voc-aug", _FULL),
    )
    sbd_train, sbd_val = (
        read_split_list(sbd_dir / "train.txt", "voc-aug", _FULL),
        read_split_list(sbd_dir / "val.txt", "voc-aug", _FULL),
    )
    train = train_aug_ids(sbd_train, sbd_val, voc_train, voc_val)
    missing = [s for s in train + voc_val if not (voc_dir / "JPEGImages" / f"{s}.jpg").exists()]
    if missing:
        raise NotFoundError(
            f"{len(missing)} images of the list are not in {voc_dir / 'JPEGImages'} (e.g. "
            f"{missing[0]}.jpg). Fix: use the full VOC2012 trainval release."
        )
    return voc_train, voc_val, train


def _write_voc_aug_masks(
    stems: list[str], sbd_dir: Path, voc_dir: Path, out_dir: Path, track: Track
) -> dict[str, int]:
    """``out_dir/SegmentationClassAug/<stem>.png``: VOC's mask where VOC has one, else SBD's."""
    mask_dir = out_dir / "SegmentationClassAug"
    mask_dir.mkdir(parents=True, exist_ok=True)
    palette = voc_palette(256)
    counts = {"voc": 0, "sbd": 0}
    for stem in track(stems, len(stems), "voc-aug masks"):
        voc_png = voc_dir / "SegmentationClass" / f"{stem}.png"
        if voc_png.exists():
            arr, counts["voc"] = load_mask(voc_png), counts["voc"] + 1
        else:
            arr, counts["sbd"] = read_sbd_mat(sbd_dir / "cls" / f"{stem}.mat"), counts["sbd"] + 1
        save_index_png(arr, mask_dir / f"{stem}.png", palette)
    return counts


# --------------------------------------------------------------------------- PASCAL-Context


def prepare_pascal_context(
    context: str | os.PathLike,
    voc2010: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    labels59: str | os.PathLike | None = None,
    skip_checksum: bool = False,
    track: Track | None = None,
) -> dict[str, Any]:
    """Write ``SegmentationClassContext`` 60-label PNGs and the train/val lists (module doc)."""
    track = track or _no_track
    work = _workdir(out, voc2010)
    mats = _context_mats(open_source(context, work, skip_checksum))
    voc_dir = find_dir(
        open_source(voc2010, work, skip_checksum),
        ["", "VOC2010", "VOCdevkit/VOC2010"],
        "ImageSets/Main",
        "VOC2010",
    )
    out_dir = Path(out).expanduser() if out else voc_dir
    ids59, names = (list(CONTEXT59_IDS), list(CONTEXT59_CLASSES))
    if labels59:
        ids59, names = read_context59_list(labels59)
        if names != CONTEXT59_CLASSES:
            log.warning("59-class names differ from sanet's list: %s", names)
    lut = context_lut(ids59)
    mask_dir = out_dir / "SegmentationClassContext"
    mask_dir.mkdir(parents=True, exist_ok=True)
    palette = voc_palette(256)
    for mat in track(mats, len(mats), "context masks"):
        save_index_png(convert_context_mat(mat, lut), mask_dir / f"{mat.stem}.png", palette)
    counts = _write_context_lists(voc_dir, out_dir, {m.stem for m in mats})
    _link_images(voc_dir / "JPEGImages", out_dir)
    return {"root": str(out_dir), **counts, "masks": len(mats), "classes": 59}


def _context_mats(source: Path) -> list[Path]:
    """The ``.mat`` label maps of the PASCAL-Context download (its ``trainval`` folder)."""
    ctx_dir = find_dir(source, ["trainval", ""], "", "context")
    mats = sorted(ctx_dir.glob("*.mat"))
    if not mats and (ctx_dir / "trainval").is_dir():
        ctx_dir = ctx_dir / "trainval"
        mats = sorted(ctx_dir.glob("*.mat"))
    if not mats:
        raise NotFoundError(
            f"no .mat label maps in {ctx_dir}. Fix: give the folder 'trainval' of the official "
            "trainval.tar.gz (or the archive itself)."
        )
    return mats


def _write_context_lists(voc_dir: Path, out_dir: Path, have: set[str]) -> dict[str, int]:
    """``ImageSets/SegmentationContext/{train,val}.txt``: VOC2010's Main split of the images
    that have a label map; returns the count of each."""
    counts = {}
    for split in ("train", "val"):
        stems = [
            s
            for s in read_split_list(
                voc_dir / "ImageSets/Main" / f"{split}.txt", "pascal-context", _FULL
            )
            if s in have
        ]
        counts[split] = _write_list(
            out_dir / "ImageSets/SegmentationContext" / f"{split}.txt", stems
        )
    if (counts["train"], counts["val"]) != (4998, 5105):
        log.warning(
            "PASCAL-Context split has %d train / %d val images; the standard one has 4,998 / 5,105",
            counts["train"],
            counts["val"],
        )
    return counts


# --------------------------------------------------------------------------- synthetic


def prepare_synthetic(
    out: str | os.PathLike,
    *,
    num_train: int = 512,
    num_val: int = 64,
    size: int = 128,
    seed: int = 0,
    generator: str = "scenes",
    family: int | None = None,
    image_format: str = "png",
    track: Track | None = None,
) -> dict[str, Any]:
    """Write synthetic scenes in the ``folder`` layout (``images/``, ``masks/``, ``classes.txt``).

    The files hold exactly what ``build_dataset("synthetic", ...)`` generates for the same
    arguments (with ``image_format="png"``; ``jpg`` is lossy). ``generator`` is ``"scenes"``,
    ``"glyphs"`` or ``"family"`` (:data:`sanet.data.synthetic.GENERATOR_NAMES`); with
    ``family`` (which implies ``"family"``) the member's parameters are also written to
    ``family.json`` and returned under ``"parameters"``.
    """
    if family is not None and generator == "scenes":
        generator = "family"  # family=N alone means "member N of the family"
    gen = get_generator(generator, family)
    if image_format not in ("png", "jpg"):
        raise UsageError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    track = track or _no_track
    out = Path(out).expanduser()
    lines = [f"{n} {r} {g} {b}" for n, (r, g, b) in zip(gen.class_names, gen.palette, strict=True)]
    stale = [d for d in (out / "images", out / "masks") if d.is_dir() and any(d.rglob("*.*"))]
    if stale:  # old scenes left beside new ones would silently join the dataset
        raise OutputExistsError(
            f"{str(out)!r} already holds images or masks ({stale[0]}). Choose an empty "
            f"{arg('out')}, or delete that folder first; nothing was written."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classes.txt", "\n".join(lines) + "\n")
    extra: dict[str, Any] = {}
    if family is not None:
        extra["parameters"] = draw_member(family).parameters()
        atomic_write_text(out / "family.json", json.dumps(extra["parameters"], indent=1) + "\n")
    for split, n in (("train", num_train), ("val", num_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in track(range(n), n, f"synthetic {split}"):
            image, mask = gen.make(size, scene_rng(seed, split, i))
            save_image(Image.fromarray(image), out / "images" / split / f"{i:06d}.{image_format}")
            save_index_png(mask, out / "masks" / split / f"{i:06d}.png", gen.palette)
    return {
        "root": str(out),
        "generator": generator,
        "train": num_train,
        "val": num_val,
        "size": size,
        "seed": seed,
        **extra,
    }
