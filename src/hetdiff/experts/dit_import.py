"""A facebookresearch/DiT checkpoint (local file) as a hetdiff expert checkpoint.

The state-dict mapping lives in ``hetdiff.models.dit_import``; this module adds the expert's
spec (DDPM, eps prediction, learned variance when the file has 2C output channels) and writes
the checkpoint, so the imported model plugs into ensembles through the DDPM velocity adapter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hetdiff.errors import HetdiffError
from hetdiff.experts.spec import ExpertSpec
from hetdiff.experts.store import save_expert
from hetdiff.models.dit_import import (
    REFERENCE_T,
    load_dit_adaln_single,
    load_dit_adaln_zero,
    read_state_dict,
)
from hetdiff.objectives.kinds import DDPM, default_prediction
from hetdiff.objectives.schedules import make_schedule


def import_dit_expert(
    source: str | Path,
    out_path: str | Path,
    model: str | None = None,
    num_heads: int | None = None,
    modulation: str = "adaln-zero",
    schedule: str = "linear",
    t_ref: float = REFERENCE_T,
    class_names: tuple[str, ...] = (),
    data_spec: str = "",
) -> Path:
    """Write a facebookresearch/DiT checkpoint (local file) as a hetdiff expert checkpoint.

    The expert is DDPM, eps prediction on ``schedule`` (DiT: linear, 1000 steps), with learned
    variance when the checkpoint has 2C output channels. ``modulation`` "adaln-zero" keeps DiT's
    conditioning (exact); "adaln-single" maps it onto AdaLN-Single at step ``t_ref``. Its
    provenance records the source file's sha256 and the mapping. Returns ``out_path``.
    """
    source = Path(source)
    state = read_state_dict(source)
    if modulation == "adaln-zero":
        net = load_dit_adaln_zero(state, model=model, num_heads=num_heads)
        mapping: dict[str, Any] = {"modulation": "adaln-zero", "exact": True}
    elif modulation == "adaln-single":
        net, report = load_dit_adaln_single(state, t_ref=t_ref, model=model, num_heads=num_heads)
        mapping = {
            "modulation": "adaln-single",
            "exact": False,
            "t_ref": report.t_ref,
            "shared_from": report.shared_from,
            "approximate": sorted(report.approximate),
        }
    else:
        raise HetdiffError(f"unknown modulation {modulation!r}; use adaln-zero or adaln-single")
    config = net.config
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    spec = ExpertSpec(
        objective=DDPM,
        prediction=default_prediction(DDPM),
        schedule=make_schedule(schedule).spec.to_dict(),
        learned_variance=config.learned_sigma,
        model={"arch": "dit", "name": model or "imported", **config.to_dict()},
        data_spec=data_spec,
        resolution=config.input_size,
        channels=config.in_channels,
        num_classes=config.num_classes,
        class_names=tuple(class_names),
        provenance={
            "imported_from": {
                "path": str(source),
                "sha256": digest,
                "format": "facebookresearch/DiT",
            },
            "mapping": mapping,
        },
    )
    out_path = Path(out_path)
    save_expert(out_path, net.state_dict(), spec)
    return out_path
