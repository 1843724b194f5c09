"""``hetdiff convert`` as one library call: a DDPM expert converted for flow fine-tuning
(``experts.convert.convert_to_flow``), or a facebookresearch/DiT file imported as an expert
(``experts.dit_import.import_dit_expert``)."""

from __future__ import annotations

from pathlib import Path

from hetdiff.errors import HetdiffError
from hetdiff.experts.convert import checkpoint_path, convert_to_flow
from hetdiff.experts.dit_import import import_dit_expert
from hetdiff.experts.store import read_spec
from hetdiff.models.dit_import import REFERENCE_T

TARGETS = ("flow", "expert")  # what ``convert_command`` makes


def convert_command(
    source: str | Path,
    to: str,
    out: str | Path,
    rehead: bool = False,
    model: str | None = None,
    num_heads: int | None = None,
    modulation: str = "adaln-zero",
    schedule: str = "linear",
    t_ref: float = REFERENCE_T,
) -> Path:
    """Convert ``source`` and write the result to ``out`` (a folder, then
    ``out/expert.safetensors``, or a ``.safetensors`` path); print and return the path.

    ``to="flow"``: a DDPM expert wrapped for flow fine-tuning (``rehead``: a zero velocity head
    instead). ``to="expert"``: a local facebookresearch/DiT state dict as a DDPM expert of the
    named config ``model`` (optional check), with ``num_heads``, DiT's ``modulation`` kept or
    mapped onto AdaLN-Single at ``t_ref``, on the DDPM ``schedule``.
    """
    if to not in TARGETS:
        raise HetdiffError(f"--to {to!r} is unknown; use one of {', '.join(TARGETS)}")
    if to == "flow":
        for flag, value in (("--model", model), ("--num-heads", num_heads)):
            if value is not None:
                raise HetdiffError(f"{flag} applies to --to expert only; drop it")
        path = convert_to_flow(source, out, rehead=rehead)
    else:
        if rehead:
            raise HetdiffError("--rehead applies to --to flow; import first, then convert")
        path = import_dit_expert(
            source,
            checkpoint_path(out),
            model=model,
            num_heads=num_heads,
            modulation=modulation,
            schedule=schedule,
            t_ref=t_ref,
        )
    spec = read_spec(path)
    print(
        f"wrote {path} ({spec.objective}, {spec.prediction}; provenance: {sorted(spec.provenance)})"
    )
    return path
