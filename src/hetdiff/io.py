"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``; and
bytes to and from local paths or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

A reader never sees a half-written artifact: either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError

TEMP_SUFFIX = ".tmp"  # atomic_path's temporary files: .NAME.<random>.tmp beside NAME


def default_cache_dir() -> Path:
    """The cache root for features, FID statistics, text embeddings and latents:
    ``$HETDIFF_CACHE_DIR`` or ``~/.cache/hetdiff``."""
    return Path(os.environ.get("HETDIFF_CACHE_DIR", Path.home() / ".cache" / "hetdiff"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The file gets the permissions a new file gets under the umask (0o666 & ~umask), set after
    the writer is done (writers such as safetensors may recreate the file owner-only). On any
    exception the temporary file is removed and ``path`` is left untouched; an ``OSError``
    (permission, disk full ENOSPC, file-size limit EFBIG, ...) becomes a one-line
    ``HetdiffError`` naming ``path``.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise HetdiffError(f"cannot write {target}: {describe_os_error(err)}") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: its strerror plus a hint for a full disk or a size limit."""
    text = err.strerror or str(err).splitlines()[0] or type(err).__name__
    if err.errno == errno.ENOSPC:
        return f"{text}; free space on that disk or choose another --out"
    if err.errno == errno.EFBIG:
        return f"{text}; the file-size limit (ulimit -f) is too small for it"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text}; choose a folder you can write"
    return text


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed ``atomic_path`` left in ``folder`` (``.NAME.*.tmp``);
    returns them. Call only where no other process is writing into ``folder``."""
    removed = []
    directory = Path(folder)
    if directory.is_dir():
        for stale in directory.glob(f".*{TEMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def check_output(path: str | os.PathLike[str], kind: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written as ``kind`` ("dir": a
    folder, created if missing; "file": a regular file, replaced if present): one that exists
    as the other kind or as a special file (device, FIFO, socket), or whose folder cannot be
    written. Probes with a temporary file it removes; creates nothing. fsspec URLs pass."""
    text = str(path)
    if "://" in text:
        return
    target = Path(text)
    if target.exists() or target.is_symlink():
        if kind == "dir" and not target.is_dir():
            raise HetdiffError(f"{flag} {target} exists and is not a folder; pass a folder path")
        if kind == "file":
            if target.is_dir():
                raise HetdiffError(f"{flag} {target} is a folder; pass a file path")
            if not target.is_file():
                raise HetdiffError(
                    f"{flag} {target} is a special file (device, pipe or socket); refusing to "
                    "replace it, pass a regular file path"
                )
    folder = target if kind == "dir" and target.is_dir() else target.parent
    while not folder.exists():  # the nearest folder that exists is where writing starts
        folder = folder.parent
    if not folder.is_dir():
        raise HetdiffError(f"{flag} {target}: {folder} is not a folder; pass another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hetdiff-probe.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise HetdiffError(
            f"{flag} {target}: cannot write in {folder} ({describe_os_error(err)})"
        ) from None
