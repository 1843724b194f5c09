"""The resumable training state mirrored to an artifact store, so a job preempted on one node
resumes on another that has none of its local files.

``state_url`` is the store folder of one job's state (for ``hetdiff run --out URL``:
``URL/experts/expert-k/train_state`` and ``URL/router/train_state``). It holds the layout of
``training.state``: ``step-XXXXXXXX/<files>`` and the manifest ``latest.json``.

Up (``push_state``, after every committed checkpoint, main process only): every file the local
manifest names is uploaded atomically (``experts.artifact_store.ArtifactStore``: a temporary key,
then one copy), the manifest last, so a reader never sees a manifest whose files are missing;
then the step folders of older checkpoints are deleted (nothing is uploaded again when the store
already holds that manifest and every file it names). A failed upload is one warning line on
stderr, never an error: training goes on and the next checkpoint uploads again.

Down (``pull_state``, when a job starts): the newest committed step wins. When the store's
manifest names a later step than the local one (or the local folder has none), its files are
downloaded into a staging folder, verified exactly as a local resume verifies them
(``state.load_train_state``: manifest digest, every file's size and sha256, each file's
signature), moved into place, and only then is the local ``latest.json`` written. A state the
store names but cannot deliver intact is a one-line error naming the URL, and the local folder
keeps what it had. A local state later than the store's is kept (and uploaded); on a tie the
local one is kept. Processes of one job that share a folder pull one at a time (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.experts.artifact_store import ArtifactStore
from hetdiff.io import atomic_write_bytes
from hetdiff.training import state as state_io

LOCK_NAME = ".pull.lock"  # in the local state folder; never uploaded
STAGING_PREFIX = ".pull-"  # a download in progress, in the local state folder


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _warn(message: str) -> None:
    print(f"hetdiff: warning: {message}", file=sys.stderr, flush=True)


def push_state(root: str | Path, state_url: str) -> bool:
    """Upload the committed state in ``root`` to ``state_url`` (module docstring: files first,
    the manifest last, older step folders deleted after); returns whether the store now holds
    it. Any failure is one warning line and returns False."""
    root, manifest = Path(root), None
    try:
        manifest = state_io.read_manifest(root)
        if manifest is None:
            return False
        store = ArtifactStore(state_url)
        listed = store.versions("")
        directory = str(manifest["directory"])
        data = (root / state_io.MANIFEST_NAME).read_bytes()
        keys = [f"{directory}/{name}" for name in manifest["files"]]
        stored = state_io.MANIFEST_NAME in listed and all(key in listed for key in keys)
        if not stored or store.get_bytes(state_io.MANIFEST_NAME) != data:  # else: there already
            for name in manifest["files"]:
                store.put_file(f"{directory}/{name}", root / directory / name)
            store.put_bytes(state_io.MANIFEST_NAME, data)  # the commit, last
        stale = {key.split("/", 1)[0] for key in listed if "/" in key} - {directory}
        for folder in sorted(stale):
            store.fs.rm(store.path(folder), recursive=True)
        return True
    except Exception as err:  # a mirror must never stop training
        step = "?" if manifest is None else manifest["step"]
        _warn(f"cannot upload the training state of step {step} to {state_url} "
              f"({_first_line(err)}); training goes on, the next checkpoint retries")  # fmt: skip
        return False


def commit_and_push(root: str | Path, step: int, world_size: int, state_url: str | None) -> None:
    """``state.commit``, then ``push_state`` when ``state_url`` is set. Main process only."""
    state_io.commit(root, step, world_size)
    if state_url is not None:
        push_state(root, state_url)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def pull_state(root: str | Path, state_url: str, log: Callable[[str], None] = print) -> bool:
    """Bring ``root`` up to the committed state at ``state_url`` when the store's is newer
    (module docstring); returns whether ``root`` then holds a committed state to resume.

    Raises HetdiffError (one line, naming ``state_url``) when the store names a state it cannot
    deliver intact: a file missing or changed, a manifest that does not verify."""
    root = Path(root)
    try:
        store = ArtifactStore(state_url)
        in_store = store.exists(state_io.MANIFEST_NAME)
        if not in_store and state_io.read_manifest(root) is None:
            return False  # nothing committed anywhere: the job starts from step 0
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / LOCK_NAME):
            for stray in root.glob(f"{STAGING_PREFIX}*"):  # a pull killed half-way
                shutil.rmtree(stray, ignore_errors=True)
            local = state_io.read_manifest(root)
            step = None
            if in_store:
                staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
                try:
                    step = _pull_newer(store, root, staging, local, log)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            if local is not None and (step is None or step < local["step"]):
                push_state(root, state_url)  # the local state is newer: the store catches up
    except HetdiffError as err:
        raise HetdiffError(f"cannot resume from the training state at {state_url}: "
                           f"{_first_line(err)}; delete it there to start over") from None  # fmt: skip
    except Exception as err:
        raise HetdiffError(f"cannot read the training state at {state_url}: {_first_line(err)}; "
                           "check the URL, the credentials and the network") from None  # fmt: skip
    return True


def _pull_newer(
    store: ArtifactStore,
    root: Path,
    staging: Path,
    local: dict[str, Any] | None,
    log: Callable[[str], None],
) -> int:
    """Download and verify the store's state into ``staging``, then install it in ``root`` when
    it is newer than ``local``; returns the store's step."""
    data = store.get_bytes(state_io.MANIFEST_NAME)
    (staging / state_io.MANIFEST_NAME).write_bytes(data)
    remote = state_io.read_manifest(staging)
    assert remote is not None
    if local is not None and local["step"] >= remote["step"]:
        return int(remote["step"])  # newest wins; a tie keeps the local state
    directory = str(remote["directory"])
    names = [str(name) for name in remote["files"]]
    if directory != state_io.step_dir("", remote["step"]).name or any(
        "/" in name or "\\" in name or name.startswith(".") for name in names
    ):  # only plain names inside the staging folder, whatever the manifest says
        raise HetdiffError(f"its manifest names unexpected paths ({directory}: {names})")
    (staging / directory).mkdir()
    for name in names:
        (staging / directory / name).write_bytes(store.get_bytes(f"{directory}/{name}"))
    state_io.load_train_state(staging)  # every byte verified, as a local resume does
    target = root / directory
    if target.exists():  # a stray folder of a killed save, never committed
        shutil.rmtree(target)
    os.replace(staging / directory, target)
    atomic_write_bytes(root / state_io.MANIFEST_NAME, data)  # the local commit, last
    for other in root.glob("step-*"):
        if other.is_dir() and other.name != directory:
            shutil.rmtree(other, ignore_errors=True)
    log(f"training state of step {remote['step']} pulled from {store.root}")
    return int(remote["step"])
