"""Expert checkpoints on disk: one safetensors file each; a directory of them is the registry.

File format: standard safetensors. Metadata (string -> string):
  "hetdiff_spec"    the ExpertSpec as JSON (objective, schedule, model config, cluster, ...)
  "hetdiff_digest"  sha256 over the metadata (spec included) and every tensor
                    (``hetdiff.experts.signed``: the exact layout, deterministic file bytes)
  "format"          "pt"
Files written before the digest carry "hetdiff_sha256" (tensors only) instead; they still load,
verified with that old meaning. Loading uses safetensors only (never unpickles) and refuses a
file that is truncated, corrupt, changed after writing (digest mismatch), unsigned (unless
``trust_unsigned``) or carries no valid spec, with a one-line error naming it. The spec is
validated, and its model's parameter shapes checked against the tensor shapes in the header,
before any weights are read or any network is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from hetdiff.errors import HetdiffError
from hetdiff.experts import signed
from hetdiff.experts.signed import LEGACY_KEY, tensors_digest
from hetdiff.experts.spec import ExpertSpec

SPEC_KEY = "hetdiff_spec"
HASH_KEY = LEGACY_KEY  # the tensors-only sha256 of checkpoints written before hetdiff_digest
DIGEST_KEY = signed.DIGEST_KEY
SUFFIX = ".safetensors"
_WHAT = "expert checkpoint"

__all__ = ["DIGEST_KEY", "HASH_KEY", "SPEC_KEY", "tensors_digest"]  # re-exported names


def save_expert(path: str | Path, state_dict: Mapping[str, Tensor], spec: ExpertSpec) -> None:
    """Write ``state_dict`` (e.g. the EMA weights) with ``spec`` as metadata, signed, atomically
    (byte-identical for identical inputs; permissions follow the umask)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise HetdiffError(f"expert checkpoint {path} must end in {SUFFIX}")
    if not isinstance(spec, ExpertSpec):
        raise HetdiffError(f"save_expert needs an ExpertSpec, got {type(spec).__name__}")
    signed.write_signed(path, state_dict, {"format": "pt", SPEC_KEY: spec.to_json()})


def _spec_from_metadata(path: Path, metadata: Mapping[str, str] | None) -> ExpertSpec:
    if not metadata or SPEC_KEY not in metadata:
        raise HetdiffError(
            f"{path} has no hetdiff spec metadata; it is not an expert checkpoint "
            "(write it with save_expert or convert it first)"
        )
    try:
        return ExpertSpec.from_json(metadata[SPEC_KEY])
    except HetdiffError as err:
        raise HetdiffError(f"{path}: {err}") from None


def _read_checked(
    path: Path, trust_unsigned: bool | None
) -> tuple[dict[str, Tensor], ExpertSpec, dict[str, list]]:
    """(verified tensors, spec, header shapes): the spec is validated from the header first."""
    metadata, shapes = signed.read_header(path, _WHAT)
    spec = _spec_from_metadata(path, metadata)
    state = signed.read_tensors(path, _WHAT)
    signed.verify(path, state, metadata, _WHAT, trust_unsigned)
    return state, spec, shapes


def read_spec(path: str | Path, trust_unsigned: bool | None = None) -> ExpertSpec:
    """The spec of a checkpoint, after verifying the whole file against its digest (a spec no
    digest covers is not trusted; ``trust_unsigned`` accepts a file without one)."""
    return _read_checked(Path(path), trust_unsigned)[1]


def load_expert_state(
    path: str | Path, trust_unsigned: bool | None = None
) -> tuple[dict[str, Tensor], ExpertSpec]:
    """Load (state_dict on CPU, spec), verifying the file's digest and the spec.

    ``trust_unsigned`` (default: ``$HETDIFF_TRUST_UNSIGNED`` == "1") accepts a file without any
    digest; a legacy ``hetdiff_sha256`` is verified over the tensors only."""
    state, spec, _ = _read_checked(Path(path), trust_unsigned)
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
    """Build the expert's network from its spec (DiT), load the weights strictly, eval mode.

    The spec's parameter shapes (a DiT built on the meta device, no memory) must equal the
    tensor shapes in the file's header before the file's weights are read and the network is
    allocated, so a crafted spec cannot allocate more than the file's own tensors."""
    path = Path(path)
    metadata, shapes = signed.read_header(path, _WHAT)
    spec = _spec_from_metadata(path, metadata)
    if spec.model.get("arch") == "diffusers":  # diffusers' own class (experts/diffusers_model)
        from hetdiff.experts.diffusers_model import diffusers_net, diffusers_shapes

        check_shapes(path, diffusers_shapes(spec, path), shapes)
        state, spec = load_expert_state(path)
        return diffusers_net(spec, state, path).to(device).eval(), spec
    config = _dit_config(path, spec)
    check_shapes(path, spec_shapes(config), shapes)
    state, spec = load_expert_state(path)
    from hetdiff.models.dit import DiT  # lazy: keeps the store free of model code

    model = DiT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise HetdiffError(f"{path}: weights do not fit the spec's model ({first_line})") from None
    return model.to(device).eval(), spec


def _dit_config(path: Path, spec: ExpertSpec):
    """The spec's DiTConfig, checked against the spec's own shape fields (one-line errors)."""
    arch = spec.model.get("arch")
    if arch != "dit":
        raise HetdiffError(f"{path}: unknown model arch {arch!r}; this version builds 'dit'")
    from hetdiff.models.dit import DiTConfig

    try:
        config = DiTConfig.from_dict(
            {k: v for k, v in spec.model.items() if k not in ("arch", "name")}
        )
    except (HetdiffError, TypeError) as err:
        raise HetdiffError(f"{path}: the spec's model is invalid ({err})") from None
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
    return config


def spec_shapes(config) -> dict[str, list[int]]:
    """{parameter or buffer name: shape} of ``DiT(config)``, built on the meta device (no
    memory is allocated for its tensors)."""
    from hetdiff.models.dit import DiT

    with torch.device("meta"):
        net = DiT(config)
    return {name: list(tensor.shape) for name, tensor in net.state_dict().items()}


def check_shapes(path: Path, expected: Mapping[str, list], found: Mapping[str, list]) -> None:
    """One-line error unless the header's tensors are exactly the expected names and shapes."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise HetdiffError(
            f"{path}: weights do not fit the spec's model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); the spec and the tensors come from different models"
        )
    for name in sorted(expected):
        if list(expected[name]) != list(found[name]):
            raise HetdiffError(
                f"{path}: weights do not fit the spec's model ({name} has shape "
                f"{list(found[name])} in the file, the spec's model needs {list(expected[name])})"
            )
