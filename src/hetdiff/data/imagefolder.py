"""Read a folder of images laid out as ``ROOT/<class name>/**/*.png|jpg|jpeg``.

Classes are the sub-folders of ROOT in sorted order; files inside a class folder are taken
recursively in sorted order of their relative path, hidden names skipped. Each file's sample id
is its index in that full listing, so fixing or removing one file does not renumber earlier ones.

Decoding uses Pillow. Every image is center-cropped to a square (side = its shorter edge); if the
squares differ in size, all are resized with Pillow's antialiased bilinear filter to the smallest
side, which becomes the source's native size. Images are kept as 8-bit gray (mode ``L``) when
every file is gray-ish (modes 1, L, LA, I, I;16, F), otherwise all are converted to RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from hetdiff.data.sources import RawSource
from hetdiff.errors import HetdiffError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _is_visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def list_image_files(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class names and ``(file, local label)`` pairs of an image folder, in sorted order."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_names: list[str] = []
    files: list[tuple[Path, int]] = []
    for class_dir in class_dirs:
        members = sorted(
            (
                p
                for p in class_dir.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _is_visible(p, root)
            ),
            key=lambda p: p.relative_to(class_dir).as_posix(),
        )
        if members:
            files.extend((path, len(class_names)) for path in members)
            class_names.append(class_dir.name)
    return tuple(class_names), files


def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """(H', W', C) uint8 center square crop and whether the file was gray-ish. Raises on failure."""
    with Image.open(path) as image:
        image.load()
        gray = image.mode in GRAY_MODES
        converted = image.convert("L" if gray else "RGB")
    side = min(converted.size)
    left = (converted.width - side) // 2
    top = (converted.height - side) // 2
    square = converted.crop((left, top, left + side, top + side))
    array = np.asarray(square, dtype=np.uint8)
    return (array[:, :, None] if gray else array), gray


def _resize_square(array: np.ndarray, side: int) -> np.ndarray:
    if array.shape[0] == side:
        return array
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    resized = np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)
    return resized[:, :, None] if resized.ndim == 2 else resized


def read_image_folder(path: str | Path, name: str, strict: bool = False) -> RawSource:
    """Decode every image under ``path`` into a :class:`RawSource` named ``name``.

    Unreadable files are skipped with one warning (count and first file) unless ``strict``,
    which raises a one-line :class:`HetdiffError` naming the file instead.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise HetdiffError(f"imagefolder path '{root}' is not a folder; pass imagefolder:DIR")
    class_names, files = list_image_files(root)
    hint = "expected one sub-folder per class holding .png/.jpg/.jpeg files"
    if not files:
        raise HetdiffError(f"imagefolder '{root}' holds no images; {hint}")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[int] = []
    all_gray = True
    bad: list[Path] = []
    for index, (file, label) in enumerate(files):
        try:
            array, gray = _decode(file)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if strict:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise HetdiffError(
                    f"cannot read image '{file}' ({reason}); fix or remove it, "
                    "or load with strict=False to skip unreadable files"
                ) from None
            bad.append(file)
            continue
        arrays.append(array)
        labels.append(label)
        ids.append(index)
        all_gray &= gray
    if bad:
        warnings.warn(
            f"imagefolder '{root}': skipped {len(bad)} unreadable image(s), first: {bad[0]}",
            RuntimeWarning,
            stacklevel=3,
        )
    if not arrays:
        raise HetdiffError(f"imagefolder '{root}' has no readable images; {hint}")

    side = min(array.shape[0] for array in arrays)
    channels = 1 if all_gray else 3
    pixels = np.empty((len(arrays), channels, side, side), dtype=np.uint8)
    for row, array in enumerate(arrays):
        if array.shape[2] != channels:  # a gray file among color ones: L -> RGB replicates
            array = np.repeat(array, channels, axis=2)
        pixels[row] = _resize_square(array, side).transpose(2, 0, 1)
    return RawSource(
        name=name,
        pixels=pixels,
        levels=255,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        local_ids=np.asarray(ids, dtype=np.int64),
    )
