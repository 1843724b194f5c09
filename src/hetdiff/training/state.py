"""Resumable training state on disk: safetensors + JSON, never pickles.

Layout under ``root`` (``out_dir/train_state``)::

    step-00000100/model.safetensors       model weights
    step-00000100/ema.safetensors         EMA weights
    step-00000100/optimizer.safetensors   optimizer tensors; its non-tensor structure as JSON
                                          in the metadata key "tree"
    step-00000100/state.json              step, data position, scheduler, config, ... (JSON)
    step-00000100/rng-rank0.safetensors   one per process: torch CPU/CUDA RNG, noise generator
    latest.json                           the manifest: which step directory is complete, with
                                          the size and sha256 of every file in it

A checkpoint is written into its step directory first; only then is ``latest.json`` replaced
atomically. A process killed half-way leaves at most a stray directory that no manifest names,
so a resume always sees the previous complete state or the new one, and a file changed after the
commit (truncated, overwritten) is refused by its hash.

Every byte is verified on read: the manifest carries ``digest``, the sha256 of its own other
fields as canonical JSON (sorted keys), and names the size and sha256 of every file; each
safetensors file is also signed (``hetdiff.experts.signed``). Manifests of format 1 (before the
digest) still resume: their files are checked by the hashes the manifest lists, as before; a
format-2 manifest without a digest is refused unless unsigned state is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.experts import signed
from hetdiff.io import atomic_write_json, atomic_write_text, file_sha256, remove_stale_temps

MANIFEST_NAME = "latest.json"
FORMAT_VERSION = 2  # 2: the manifest carries its own digest and the files are signed
_LEGACY_VERSIONS = (1,)
_WHAT = "training state file"
KILL_ENV = "HETDIFF_TEST_KILL_AT"
KILL_POINTS = ("before-artifact", "after-artifact", "in-state", "after-state")


def kill_point(point: str, step: int, out_dir: str | Path) -> None:
    """Test hook: SIGKILL this process at checkpoint-protocol ``point`` (one of
    ``KILL_POINTS``) of optimizer step ``step`` when ``$HETDIFF_TEST_KILL_AT`` is "POINT:STEP"
    or "POINT:STEP:TEXT" with TEXT a part of ``out_dir``. Does nothing when it is unset."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    parts = wanted.split(":", 2)
    if len(parts) < 2 or parts[0] != point or parts[1] != str(step):
        return
    if len(parts) == 3 and parts[2] not in str(out_dir):
        return
    os.kill(os.getpid(), signal.SIGKILL)


def clean_uncommitted(out_dir: Path, root: Path, manifest: dict[str, Any] | None) -> None:
    """Remove what a killed run left behind: ``atomic_path`` temporaries in ``out_dir`` and
    ``root``, and, when nothing is committed, every step folder under ``root``. Main only,
    before any process writes."""
    remove_stale_temps(out_dir)
    remove_stale_temps(root)
    if manifest is None and root.is_dir():
        for stray in root.glob("step-*"):
            shutil.rmtree(stray, ignore_errors=True)


_SHARED_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json")


# ----------------------------------------------------------------------------------------------
# Nested structures (optimizer / scheduler state dicts) <-> JSON + named tensors
# ----------------------------------------------------------------------------------------------


def flatten_tree(tree: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """Split a nested structure into a JSON-able skeleton and a flat ``{name: tensor}`` dict.

    Tensors become ``{"$tensor": name}``, tuples ``{"$tuple": [...]}``, dicts with non-string
    keys (AdamW's integer parameter ids) ``{"$map": [[key, value], ...]}``. Supported leaves:
    None, bool, int, float, str, Tensor. ``unflatten_tree`` inverts it exactly.
    """
    tensors: dict[str, Tensor] = {}

    def encode(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node
            return {"$tensor": path}
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, tuple):
            return {"$tuple": [encode(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [encode(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, Mapping):
            keys = list(node)
            if all(isinstance(k, str) and not k.startswith("$") for k in keys):
                return {k: encode(v, f"{path}.{k}") for k, v in node.items()}
            if not all(isinstance(k, int | str) and not isinstance(k, bool) for k in keys):
                raise HetdiffError(f"cannot store dict key of type {type(keys[0]).__name__}")
            return {"$map": [[k, encode(v, f"{path}.{k}")] for k, v in node.items()]}
        raise HetdiffError(f"cannot store a {type(node).__name__} in training state at {path!r}")

    return encode(tree, prefix), tensors


def unflatten_tree(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of ``flatten_tree``."""
    if isinstance(skeleton, list):
        return [unflatten_tree(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if set(skeleton) == {"$tensor"}:
            return tensors[skeleton["$tensor"]]
        if set(skeleton) == {"$tuple"}:
            return tuple(unflatten_tree(v, tensors) for v in skeleton["$tuple"])
        if set(skeleton) == {"$map"}:
            return {k: unflatten_tree(v, tensors) for k, v in skeleton["$map"]}
        return {k: unflatten_tree(v, tensors) for k, v in skeleton.items()}
    return skeleton


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _cpu_copy(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous, unshared CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _save_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> None:
    signed.write_signed(path, _cpu_copy(tensors), metadata)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 (hex) of the manifest's fields other than ``digest``, as canonical JSON."""
    fields = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(signed.canonical_json(fields).encode()).hexdigest()


def step_dir(root: str | Path, step: int) -> Path:
    """The directory that holds the state after ``step`` optimizer steps."""
    return Path(root) / f"step-{step:08d}"


def prepare_step_dir(root: str | Path, step: int) -> Path:
    """Create an empty step directory (removing a stray one left by a killed run). Main only."""
    directory = step_dir(root, step)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def write_shared_state(
    directory: Path,
    *,
    model: Mapping[str, Tensor],
    ema: Mapping[str, Tensor],
    optimizer: Mapping[str, Any],
    meta: dict[str, Any],
) -> None:
    """Write the state every process shares (model, EMA, optimizer, JSON meta). Main only."""
    _save_safetensors(directory / "model.safetensors", model, {"format": "pt"})
    _save_safetensors(directory / "ema.safetensors", ema, {"format": "pt"})
    skeleton, opt_tensors = flatten_tree(dict(optimizer), "optimizer")
    _save_safetensors(
        directory / "optimizer.safetensors",
        opt_tensors,
        {"format": "pt", "tree": json.dumps(skeleton)},
    )
    atomic_write_json(directory / "state.json", {"format_version": FORMAT_VERSION, **meta})


def write_rank_state(directory: Path, rank: int, rng: Mapping[str, Tensor]) -> None:
    """Write one process's RNG states (uint8 tensors from ``get_state()``)."""
    _save_safetensors(directory / f"rng-rank{rank}.safetensors", rng, {"format": "pt"})


def commit(root: str | Path, step: int, world_size: int) -> None:
    """Name ``step``'s directory complete in the manifest, then delete other step dirs. Main only.

    Call after every process has written its files (a barrier).
    """
    root = Path(root)
    directory = step_dir(root, step)
    names = [*_SHARED_FILES, *(f"rng-rank{r}.safetensors" for r in range(world_size))]
    files = {}
    for name in names:
        path = directory / name
        if not path.is_file():
            raise HetdiffError(f"checkpoint file {path} was not written; check disk space")
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "directory": directory.name,
        "world_size": world_size,
        "files": files,
    }
    manifest["digest"] = manifest_digest(manifest)
    atomic_write_json(root / MANIFEST_NAME, manifest)
    for other in root.glob("step-*"):
        if other.is_dir() and other.name != directory.name:
            shutil.rmtree(other, ignore_errors=True)


def capture_rng(noise: torch.Generator) -> dict[str, Tensor]:
    """This process's RNG states: torch's global CPU (and CUDA) RNG and the loss's generator."""
    states = {"torch_cpu": torch.get_rng_state(), "noise": noise.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda{index}"] = cuda_state
    return states


def restore_rng(states: Mapping[str, Tensor], noise: torch.Generator) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(states["torch_cpu"])
    noise.set_state(states["noise"])
    cuda = sorted(k for k in states if k.startswith("torch_cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[k] for k in cuda])


def trim_log(log_path: Path, max_step: int) -> None:
    """Keep the JSONL log lines with step <= max_step (drops steps redone after a resume and a
    line torn by a kill), rewritten atomically."""
    kept = []
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", float("inf")) <= max_step:
                kept.append(line + "\n")
    atomic_write_text(log_path, "".join(kept))


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything ``load_train_state`` read back for one process."""

    step: int
    directory: Path
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    meta: dict[str, Any]


def read_manifest(root: str | Path, trust_unsigned: bool | None = None) -> dict[str, Any] | None:
    """The committed manifest, verified against its digest, or None when ``root`` holds no
    committed state (e.g. a run killed while writing its first checkpoint)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise HetdiffError(
            f"training state manifest {path} is unreadable ({str(err).splitlines()[0]}); "
            "delete it to start over"
        ) from None
    if not isinstance(manifest, dict):
        raise HetdiffError(f"training state manifest {path} is not a JSON object")
    version = manifest.get("format_version")
    if "digest" in manifest:
        if manifest["digest"] != manifest_digest(manifest):
            raise HetdiffError(
                f"training state manifest {path} is corrupt or was changed after writing (digest "
                "mismatch); refusing to resume from it"
            )
    elif version not in _LEGACY_VERSIONS and not signed.trusts_unsigned(trust_unsigned):
        raise HetdiffError(
            f"training state manifest {path} carries no digest; pass --trust-unsigned to resume "
            "from it anyway"
        )
    if version not in (FORMAT_VERSION, *_LEGACY_VERSIONS):
        raise HetdiffError(
            f"training state manifest {path} has an unknown format; start a new --out directory"
        )
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("step"), int):
        raise HetdiffError(f"training state manifest {path} is incomplete; start over")
    return manifest


def _load_safetensors(
    path: Path, check_signature: bool
) -> tuple[dict[str, Tensor], dict[str, str]]:
    metadata, _ = signed.read_header(path, _WHAT)
    tensors = signed.read_tensors(path, _WHAT)
    if check_signature:
        signed.verify(path, tensors, metadata, _WHAT)
    return tensors, metadata


def load_train_state(
    root: str | Path, rank: int = 0, trust_unsigned: bool | None = None
) -> TrainState:
    """Load the committed state for process ``rank``, verifying the manifest's digest, every
    file's size and sha256 and each file's signature.

    Raises HetdiffError (one line, naming the file) when nothing is committed or a file is
    missing, truncated or changed since the commit.
    """
    root = Path(root)
    manifest = read_manifest(root, trust_unsigned)
    if manifest is None:
        raise HetdiffError(f"no training state in {root}; run without --resume to start fresh")
    directory = root / str(manifest.get("directory"))
    if directory.name != f"step-{manifest['step']:08d}":
        raise HetdiffError(
            f"training state manifest in {root} names {directory.name} for step "
            f"{manifest['step']}; it is corrupt"
        )
    for name, info in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise HetdiffError(f"training state file {path} is missing; cannot resume")
        size = path.stat().st_size
        if size != info["bytes"] or file_sha256(path) != info["sha256"]:
            raise HetdiffError(
                f"training state file {path} is truncated or changed ({size} bytes, committed "
                f"{info['bytes']}); refusing to resume from it"
            )
    rng_name = f"rng-rank{rank}.safetensors"
    if rng_name not in manifest["files"]:
        raise HetdiffError(
            f"training state in {directory} was saved by {manifest['world_size']} processes; "
            f"resume with the same number of processes"
        )
    check = manifest["format_version"] == FORMAT_VERSION
    model, _ = _load_safetensors(directory / "model.safetensors", check)
    ema, _ = _load_safetensors(directory / "ema.safetensors", check)
    opt_tensors, opt_meta = _load_safetensors(directory / "optimizer.safetensors", check)
    optimizer = unflatten_tree(json.loads(opt_meta["tree"]), opt_tensors)
    rng, _ = _load_safetensors(directory / rng_name, check)
    meta = json.loads((directory / "state.json").read_text())
    if meta.get("step") != manifest["step"]:
        raise HetdiffError(
            f"training state in {directory} is at step {meta.get('step')} but its manifest says "
            f"{manifest['step']}; it is corrupt"
        )
    return TrainState(
        step=int(manifest["step"]),
        directory=directory,
        model=model,
        ema=ema,
        optimizer=optimizer,
        rng=rng,
        meta=meta,
    )
