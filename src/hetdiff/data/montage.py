"""PNG montages of images in ``[-1, 1]``: a grid, or one row per group (e.g. per cluster).

Pixels map to bytes by ``round((x + 1) / 2 * 255)`` after clipping to ``[-1, 1]``. Cells are
separated by ``pad`` pixels of white (value 255); gray images stay single-channel unless a
row mixes gray and RGB. Local paths are written atomically; fsspec URLs also work.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_bytes


def to_uint8(images: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in ``[-1, 1]`` -> ``(N, H, W, C)`` uint8 with ``C`` in {1, 3}."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise HetdiffError(f"montage needs images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _canvas(rows: list[np.ndarray], ncols: int, height: int, width: int, pad: int) -> np.ndarray:
    """Paste ``rows`` (each ``(n_i, H, W, C)``, ``n_i <= ncols``) onto a white canvas."""
    channels = max(row.shape[-1] for row in rows if len(row)) if any(len(r) for r in rows) else 1
    canvas = np.full(
        (pad + len(rows) * (height + pad), pad + ncols * (width + pad), channels), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = image  # broadcasts gray to RGB
    return canvas


def _encode_png(canvas: np.ndarray) -> bytes:
    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(canvas_bytes: bytes, path: str) -> None:
    """Write PNG bytes to a local path (atomically) or an fsspec URL."""
    fs, fs_path = fsspec.core.url_to_fs(str(path))
    if isinstance(fs, LocalFileSystem):
        atomic_write_bytes(fs_path, canvas_bytes)
    else:
        fs.pipe_file(fs_path, canvas_bytes)


def save_grid(images: Tensor, path: str, nrow: int = 8, pad: int = 2) -> None:
    """Save ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` as a PNG grid with ``nrow`` images a row."""
    if len(images) == 0:
        raise HetdiffError("no images to put in the grid")
    if nrow < 1:
        raise HetdiffError(f"grid row length {nrow} must be >= 1")
    pixels = to_uint8(images)
    rows = [pixels[i : i + nrow] for i in range(0, len(pixels), nrow)]
    ncols = min(nrow, len(pixels))
    canvas = _canvas(rows, ncols, pixels.shape[1], pixels.shape[2], pad)
    write_png(_encode_png(canvas), str(path))


def montage_rows(rows: list[Tensor], path: str, pad: int = 2) -> None:
    """Save one row per tensor ``(n_i, C, H, W)`` (lengths may differ; empty rows stay blank).

    All images must share ``H`` and ``W``. The PNG is ``max(n_i)`` cells wide.
    """
    if not rows:
        raise HetdiffError("no rows to put in the montage")
    pixel_rows = [to_uint8(row) if len(row) else np.zeros((0, 1, 1, 1), np.uint8) for row in rows]
    shapes = {row.shape[1:3] for row in pixel_rows if len(row)}
    if len(shapes) != 1:
        raise HetdiffError(f"montage rows need one image size, got {sorted(shapes)}")
    height, width = shapes.pop()
    ncols = max(1, max(len(row) for row in pixel_rows))
    canvas = _canvas(pixel_rows, ncols, height, width, pad)
    write_png(_encode_png(canvas), str(path))
