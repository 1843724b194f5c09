"""Expert checkpoints on disk: one safetensors file each; a directory of them is the registry.

File format: standard safetensors. Metadata (string -> string):
  "hetdiff_spec"    the ExpertSpec as JSON (objective, schedule, model config, cluster, ...)
  "hetdiff_sha256"  sha256 over every tensor's name, dtype, shape and bytes (sorted by name)
  "format"          "pt"
Loading uses safetensors only (never unpickles) and refuses a file that is truncated, corrupt,
changed after writing (hash mismatch) or carries no spec, with a one-line error naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec
from hetdiff.io import atomic_path

SPEC_KEY = "hetdiff_spec"
HASH_KEY = "hetdiff_sha256"
SUFFIX = ".safetensors"


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 (hex) over (name, dtype, shape, raw bytes) of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_expert(path: str | Path, state_dict: Mapping[str, Tensor], spec: ExpertSpec) -> None:
    """Write ``state_dict`` (e.g. the EMA weights) with ``spec`` as metadata, atomically."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise HetdiffError(f"expert checkpoint {path} must end in {SUFFIX}")
    if not isinstance(spec, ExpertSpec):
        raise HetdiffError(f"save_expert needs an ExpertSpec, got {type(spec).__name__}")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    metadata = {"format": "pt", SPEC_KEY: spec.to_json(), HASH_KEY: tensors_digest(tensors)}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise HetdiffError(f"expert checkpoint {path} does not exist")


def _spec_from_metadata(path: Path, metadata: Mapping[str, str] | None) -> ExpertSpec:
    if not metadata or SPEC_KEY not in metadata:
        raise HetdiffError(
            f"{path} has no hetdiff spec metadata; it is not an expert checkpoint "
            "(write it with save_expert or convert it first)"
        )
    try:
        return ExpertSpec.from_json(metadata[SPEC_KEY])
    except HetdiffError as err:
        raise HetdiffError(f"{path}: {err}") from err


def read_spec(path: str | Path) -> ExpertSpec:
    """The spec of a checkpoint, reading only its header (no tensor data)."""
    path = Path(path)
    _check_exists(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except (OSError, safetensors.SafetensorError) as err:
        raise HetdiffError(f"expert checkpoint {path} is truncated or corrupt ({err})") from err
    return _spec_from_metadata(path, metadata)


def load_expert_state(path: str | Path) -> tuple[dict[str, Tensor], ExpertSpec]:
    """Load (state_dict on CPU, spec), verifying the file's integrity and the spec."""
    path = Path(path)
    _check_exists(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, safetensors.SafetensorError) as err:
        raise HetdiffError(f"expert checkpoint {path} is truncated or corrupt ({err})") from err
    spec = _spec_from_metadata(path, metadata)
    expected = metadata.get(HASH_KEY)
    if expected is not None and tensors_digest(state) != expected:
        raise HetdiffError(
            f"expert checkpoint {path} is corrupt: its weights do not match the stored sha256"
        )
    return state, spec


def list_experts(directory: str | Path) -> list[tuple[Path, ExpertSpec]]:
    """The registry: every ``*.safetensors`` in ``directory`` or one folder below it that carries
    a hetdiff spec.

    Sorted by (cluster_id, file name), experts without a cluster last. Files without a spec are
    skipped; an unreadable file raises (a broken registry should not shrink silently).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise HetdiffError(f"expert registry {directory} is not a directory")
    found = []
    # checkpoints directly in the folder, or one level down (one folder per expert)
    candidates = sorted(directory.glob(f"*{SUFFIX}")) + sorted(directory.glob(f"*/*{SUFFIX}"))
    for path in candidates:
        try:
            found.append((path, read_spec(path)))
        except HetdiffError as err:
            if "has no hetdiff spec metadata" in str(err):
                continue
            raise
    if not found:
        raise HetdiffError(f"no expert checkpoints (*{SUFFIX} with a hetdiff spec) in {directory}")

    def order(item: tuple[Path, ExpertSpec]) -> tuple[bool, int, str]:
        path, spec = item
        return (spec.cluster_id is None, spec.cluster_id or 0, path.name)

    return sorted(found, key=order)


def load_expert_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ExpertSpec]:
    """Build the expert's network from its spec (DiT), load the weights strictly, eval mode."""
    state, spec = load_expert_state(path)
    arch = spec.model.get("arch")
    if arch != "dit":
        raise HetdiffError(f"{path}: unknown model arch {arch!r}; this version builds 'dit'")
    from hetdiff.models.dit import DiT, DiTConfig  # lazy: keeps the store free of model code

    config = DiTConfig.from_dict({k: v for k, v in spec.model.items() if k not in ("arch", "name")})
    pairs = (
        ("channels", spec.channels, "in_channels", config.in_channels),
        ("resolution", spec.resolution, "input_size", config.input_size),
        ("learned_variance", spec.learned_variance, "learned_sigma", config.learned_sigma),
    )
    for spec_name, spec_value, model_name, model_value in pairs:
        if spec_value != model_value:
            raise HetdiffError(
                f"{path}: spec {spec_name}={spec_value!r} disagrees with model {model_name}="
                f"{model_value!r}; fix the spec"
            )
    model = DiT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise HetdiffError(f"{path}: weights do not fit the spec's model ({first_line})") from err
    return model.to(device).eval(), spec
