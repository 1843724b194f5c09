"""A run whose root is an fsspec URL (``hetdiff run --out s3://bucket/run``): a local work
folder mirrors it through the artifact store.

The stages read and write a local folder, because some files must be local: the resumable
training state, a launcher's scratch files, the files a stage opens by path. That folder is
``$HETDIFF_CACHE_DIR/runs/<sha256 of the URL>/`` (``work_folder``). Before the first stage
``RunStore.pull`` brings down what the store holds (config, partition manifest, stage markers,
finished experts and their logs, router, samples, report), each checkpoint verified against its
own sha256 digest, so a rerun on any machine skips what is already in the store. After each
stage ``RunStore.push`` uploads every file that changed since the last sync, the stage markers
last (a reader that sees a marker finds its outputs), each upload atomic
(``experts.artifact_store.ArtifactStore``: a temporary key, then one server-side copy).

Never pushed or pulled here (``LOCAL_ONLY``): ``train_state/`` and ``slurm/`` (submitit's
scripts and pickles). The resumable training state has its own protocol, run by the job that
trains: each expert job (and the router stage) uploads every committed checkpoint to
``<url>/experts/expert-k/train_state/`` (``<url>/router/train_state/``), files first and the
manifest last, older checkpoints deleted after, and at its start pulls the store's state when it
is newer than the work folder's, verified as a local resume is
(``training.state_mirror``, ``ExpertJob.state_url``). So a job preempted on one machine resumes
on another from its last checkpoint, and ``pull`` never downloads a training state into a work
folder for a stage that does not train. A store without ``config.json`` is a new run: a stale
work folder for the same URL is cleared first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from hetdiff.errors import HetdiffError
from hetdiff.experts.artifact_store import ArtifactStore, is_url
from hetdiff.io import (
    TEMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    default_cache_dir,
    file_sha256,
)

LOCAL_ONLY = ("train_state", "slurm")  # folder names kept in the work folder only
INDEX_NAME = ".store-index.json"  # {key: {"sha256": local file, "version": store object}}
CHECKPOINT_FOLDERS = ("experts/", "router/")  # *.safetensors below them are verified on pull
CONFIG_KEY = "config.json"
MARKERS = "stages/"


def work_folder(url: str) -> Path:
    """The local work folder of the run rooted at ``url``:
    ``hetdiff.io.default_cache_dir() / "runs" / sha256(url)[:16]``."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return default_cache_dir() / "runs" / digest


class RunStore:
    """The artifact root ``url`` of one run and its local work folder ``work``."""

    def __init__(self, url: str, work: str | Path | None = None) -> None:
        self.url = str(url).rstrip("/")
        self.store = ArtifactStore(self.url)
        self.work = Path(work) if work is not None else work_folder(self.url)

    def _index(self) -> dict[str, dict[str, str]]:
        try:
            index = json.loads((self.work / INDEX_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return index if isinstance(index, dict) else {}

    def _save_index(self, index: dict[str, dict[str, str]]) -> None:
        atomic_write_json(self.work / INDEX_NAME, index)

    def pull(
        self, prefixes: tuple[str, ...] = ("",), log: Callable[[str], None] = print
    ) -> list[str]:
        """Download every object under ``prefixes`` that the work folder lacks or that changed
        in the store since the last sync, checkpoints verified (refused with a one-line error
        naming the URL); returns the keys downloaded."""
        with _one_line_errors(f"cannot read {self.url}"):
            return self._pull(prefixes, log)

    def _pull(self, prefixes: tuple[str, ...], log: Callable[[str], None]) -> list[str]:
        listed: dict[str, str] = {}
        for prefix in prefixes:
            listed.update(self.store.versions(prefix))
        listed = {
            k: v for k, v in listed.items() if not _local_only(k)
        }  # train_state: the jobs pull it
        if CONFIG_KEY not in listed and prefixes == ("",) and self.work.exists():
            shutil.rmtree(self.work)  # a new run at this URL: forget a stale work folder
        index = self._index()
        pulled = []
        for key, version in sorted(listed.items()):
            local = self.work / key
            entry = index.get(key, {})
            if local.is_file() and entry.get("version") == version:
                continue
            if key.endswith(".safetensors") and key.startswith(CHECKPOINT_FOLDERS):
                self.store.fetch_checkpoint(key, local)
            else:
                atomic_write_bytes(local, self.store.get_bytes(key))
            index[key] = {"sha256": file_sha256(local), "version": version}
            pulled.append(key)
        if pulled:
            self._save_index(index)
            log(f"pulled {len(pulled)} files from {self.url} into {self.work}")
        return pulled

    def local_files(self) -> list[str]:
        """The keys of the work folder's files that belong in the store: everything but
        ``LOCAL_ONLY`` folders, temporary files and the index; markers sorted last."""
        keys = []
        for path in self.work.rglob("*"):
            rel = path.relative_to(self.work)
            if not path.is_file() or _local_only(rel.as_posix()):
                continue
            if path.name == INDEX_NAME or path.name.endswith(TEMP_SUFFIX):
                continue
            keys.append(rel.as_posix())
        return sorted(keys, key=lambda key: (key.startswith(MARKERS), key))

    def push(self, log: Callable[[str], None] = print) -> list[str]:
        """Upload every file of the work folder whose bytes differ from its last sync (atomic
        per object, stage markers last); returns the keys uploaded."""
        with _one_line_errors(f"cannot write to {self.url}"):
            return self._push(log)

    def _push(self, log: Callable[[str], None]) -> list[str]:
        if not self.work.is_dir():
            return []
        index = self._index()
        pushed = []
        for key in self.local_files():
            digest = file_sha256(self.work / key)
            if index.get(key, {}).get("sha256") == digest:
                continue
            self.store.put_file(key, self.work / key)
            version = self.store.versions(key).get(key, "")
            index[key] = {"sha256": digest, "version": version}
            self._save_index(index)  # after each object: a killed push redoes only the rest
            pushed.append(key)
        if pushed:
            log(f"pushed {len(pushed)} files to {self.url}")
        return pushed


def _local_only(key: str) -> bool:
    """Whether ``key`` lies in a ``LOCAL_ONLY`` folder (any level)."""
    return any(part in LOCAL_ONLY for part in key.split("/")[:-1])


@contextlib.contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Turn an fsspec backend's own error (botocore, aiohttp, gcsfs, ...: a network, permission
    or missing-bucket failure) into one HetdiffError line naming ``what`` and the fix."""
    try:
        yield
    except HetdiffError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        raise HetdiffError(
            f"{what}: {text[0] if text else type(err).__name__}; check the URL, the "
            "credentials (e.g. AWS_* variables) and the network"
        ) from None


def open_run_root(out: str | Path) -> tuple[Path, RunStore | None]:
    """(the local folder the stages use, the store or None): a URL root works in its
    ``work_folder``; a local path is used as it is."""
    if is_url(out) and not str(out).startswith("file://"):
        store = RunStore(str(out))
        return store.work, store
    if str(out).startswith("file://"):
        return Path(str(out)[len("file://") :]), None
    if not str(out):
        raise HetdiffError("--out is empty; pass a run folder or an fsspec URL")
    return Path(out), None
