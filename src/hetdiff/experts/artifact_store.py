"""A run's artifact root at any fsspec URL (a local folder, ``s3://``, ``gs://``, ...).

Writes are atomic on object stores too: an object is uploaded under a temporary key beside its
final one (``.NAME.<random>.tmp``), then copied to the final key in one server-side operation and
the temporary key deleted, so a reader of the final key sees the old object or the complete new
one, never a part (an upload interrupted halfway leaves at most a temporary key, never a final
one). Local roots use ``hetdiff.io.atomic_path``. Every expert checkpoint read back is verified
against its own digest (``hetdiff.experts.store``: sha256 over metadata and tensors) before it is
used; a checkpoint whose bytes changed in the store is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.io import TEMP_SUFFIX, atomic_path

CHUNK = 8 * 2**20  # bytes per write when streaming a file up


class ArtifactStore:
    """Objects under ``root`` (an fsspec URL or a local path), addressed by '/'-separated keys."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        try:
            self.fs, path = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise HetdiffError(f"cannot open artifact root {root}: {err}".splitlines()[0]) from None
        self.root = str(root).rstrip("/")
        self._base = path.rstrip("/")

    def path(self, key: str) -> str:
        """The file-system path of ``key`` (for ``self.fs``)."""
        return f"{self._base}/{key.strip('/')}"

    def url(self, key: str) -> str:
        return f"{self.root}/{key.strip('/')}"

    @property
    def is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write the concatenated ``chunks`` to ``key`` atomically (see the module docstring);
        on any error the final key is untouched and the temporary key removed."""
        final = self.path(key)
        if self.is_local:
            with atomic_path(final) as tmp, open(tmp, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            return
        folder, name = final.rsplit("/", 1)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            with self.fs.open(temporary, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            self.fs.copy(temporary, final)  # one server-side copy: all or nothing
        except OSError as err:
            raise HetdiffError(f"cannot write {self.url(key)}: {err}".splitlines()[0]) from None
        finally:
            try:
                if self.fs.exists(temporary):
                    self.fs.rm(temporary)
            except OSError:
                pass  # a stray temporary key is invisible under the final key

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically."""
        self.put_chunks(key, [data])

    def put_file(self, key: str, local: str | Path) -> None:
        """Upload the local file ``local`` to ``key`` atomically, in chunks."""
        self.put_chunks(key, _read_chunks(Path(local)))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise HetdiffError(f"{self.url(key)} not found in the artifact store") from None

    def fetch_expert(self, key: str, dest: str | Path) -> Path:
        """Download the expert checkpoint at ``key`` to the local file ``dest`` and verify it
        against its digest (``experts.store.read_spec``); a checkpoint changed in the store is
        refused (one-line error naming its URL) and nothing is left at ``dest``."""
        from hetdiff.experts.store import read_spec

        dest = Path(dest)
        with atomic_path(dest) as tmp:  # renamed onto dest only once verified
            tmp.write_bytes(self.get_bytes(key))
            try:
                read_spec(tmp)
            except HetdiffError as err:
                raise HetdiffError(
                    f"expert checkpoint {self.url(key)} does not verify ({err}); "
                    "its bytes changed in the store: upload it again from its island"
                ) from None
        return dest

    def fetch_checkpoint(self, key: str, dest: str | Path) -> Path:
        """Download any signed checkpoint at ``key`` (an expert, a router, a student) to the
        local file ``dest``, verified against its own sha256 digest (``experts.signed``); a
        file whose bytes changed in the store is refused and nothing is left at ``dest``."""
        from hetdiff.experts.signed import read_signed

        dest = Path(dest)
        with atomic_path(dest) as tmp:  # renamed onto dest only once verified
            tmp.write_bytes(self.get_bytes(key))
            try:
                read_signed(tmp, "checkpoint")
            except HetdiffError as err:
                raise HetdiffError(
                    f"checkpoint {self.url(key)} does not verify ({err}); its bytes changed in "
                    "the store: delete it there to retrain it, or upload an intact copy"
                ) from None
        return dest

    def versions(self, prefix: str = "") -> dict[str, str]:
        """{key: version token} of every object under ``prefix`` (temporary upload keys left
        out); the token (ETag, or size and mtime) changes whenever the object is rewritten."""
        base = self.path(prefix).rstrip("/")
        if not self.fs.exists(base):
            return {}
        try:
            found = self.fs.find(base, detail=True)
        except (OSError, ValueError) as err:
            raise HetdiffError(f"cannot list {self.url(prefix)}: {err}".splitlines()[0]) from None
        listed = {}
        for path, info in found.items():
            key = path[len(self._base) :].strip("/")
            name = key.rsplit("/", 1)[-1]
            if info.get("type") == "directory" or (
                name.startswith(".") and name.endswith(TEMP_SUFFIX)
            ):
                continue
            listed[key] = version_token(info)
        return listed


def version_token(info: dict[str, Any]) -> str:
    """An object's version from its fsspec info: the ETag where the store has one, else its
    size and modification time."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    return (
        f"{info.get('size')}-{info.get('mtime') or info.get('LastModified') or info.get('created')}"
    )


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def is_url(path: str | Path) -> bool:
    """True for an fsspec URL (``s3://...``, ``file://...``), False for a plain local path."""
    return "://" in str(path)


CHECKPOINT_SUFFIX = ".safetensors"


def local_copy(url: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of the checkpoint file or folder at ``url`` (experts, a router, a registry of
    experts one folder down): every ``*.safetensors`` below it, at most two levels deep, keeps its
    relative path under ``cache_dir/store/<sha256 of url>/`` (default cache:
    ``hetdiff.io.default_cache_dir()``). Each file is downloaded again and written atomically;
    the loaders verify each checkpoint's digest when they read it, so a file whose bytes changed
    in the store is refused there. Returns the local file or folder."""
    import hashlib

    from hetdiff.io import default_cache_dir

    store = ArtifactStore(url)
    base = Path(cache_dir or default_cache_dir()) / "store"
    base = base / hashlib.sha256(url.encode()).hexdigest()[:16]
    try:
        if store.fs.isfile(store.path("")):
            name = store.path("").rsplit("/", 1)[-1]
            dest = base / name
            with atomic_path(dest) as tmp:
                tmp.write_bytes(store.fs.cat_file(store.path("")))
            return dest
        found = store.fs.find(store.path(""), maxdepth=2)
    except (OSError, ValueError) as err:
        raise HetdiffError(f"cannot read {url}: {err}".splitlines()[0]) from None
    keys = [f[len(store.path("")) :].strip("/") for f in found if f.endswith(CHECKPOINT_SUFFIX)]
    if not keys:
        raise HetdiffError(f"no {CHECKPOINT_SUFFIX} checkpoint under {url}; check the URL")
    for key in keys:
        with atomic_path(base / key) as tmp:
            tmp.write_bytes(store.get_bytes(key))
    return base
