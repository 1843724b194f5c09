"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``; and
bytes to and from local paths or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

A reader never sees a half-written artifact: either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError


def default_cache_dir() -> Path:
    """The cache root for features, FID statistics, text embeddings and latents:
    ``$HETDIFF_CACHE_DIR`` or ``~/.cache/hetdiff``."""
    return Path(os.environ.get("HETDIFF_CACHE_DIR", Path.home() / ".cache" / "hetdiff"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sibling_url(path_or_url: str, name: str) -> str:
    """``name`` in the same folder as ``path_or_url`` (URL or local path)."""
    head = str(path_or_url).rsplit("/", 1)
    return f"{head[0]}/{name}" if len(head) == 2 else name


def write_url_bytes(path_or_url: str, data: bytes) -> None:
    """Write bytes to a local path (atomically) or an fsspec URL."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(path_or_url)
    if isinstance(fs, LocalFileSystem):
        atomic_write_bytes(path, data)
        return
    parent = os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def read_url_bytes(path_or_url: str, what: str, hint: str = "") -> bytes:
    """The bytes at a local path or fsspec URL; one-line errors naming ``what`` (e.g.
    "partition file") and, for a missing file, ``hint`` (how to create it)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(path_or_url)
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise HetdiffError(f"{what} {path_or_url} not found{'; ' + hint if hint else ''}") from err
    except (OSError, ValueError, ImportError) as err:
        raise HetdiffError(f"cannot read {what} {path_or_url}: {err}".splitlines()[0]) from err
