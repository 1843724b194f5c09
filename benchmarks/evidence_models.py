"""The models and ensembles of ``benchmarks/evidence.py``: expert settings, the K experts of an
ensemble (expert k on cluster k with seed ``seed + k``, as ``hetdiff run`` seeds them), and their
evaluation through ``Lab.evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hetdiff.config import ExpertSettings

FLOW = {"objective": "flow"}
# The DDPM experts' best measured setting: v-prediction on the cosine schedule (89% prompt
# following against 60% for eps on the linear schedule, benchmarks/text_following.py; the
# eps experts sample noise-like images at small budgets, issue 18).
DDPM_BEST = {"objective": "ddpm", "prediction": "v", "schedule": "cosine"}
# What HDDM warm-starts from: a DDPM eps-prediction model on the linear schedule.
DDPM_PRETRAIN = {"objective": "ddpm", "prediction": "eps", "schedule": "linear"}


def settings(lab: Any, model: str, objective: dict, seed: int, conditional: bool = True):
    a = lab.args
    return ExpertSettings(
        **objective,
        model=model,
        batch_size=a.batch,
        lr=a.lr,
        seed=seed,
        class_conditional=conditional,
        mixed_precision="no",
    )


def experts(lab: Any, model: str, objectives: list[dict], steps: int, part: Any) -> list[Path]:
    """Expert k of an ensemble: ``objectives[k]`` on cluster k, seed ``seed + k`` (as ``hetdiff
    run`` seeds them), so a flow expert of one cluster is the same model in every ensemble."""
    return [
        lab.model(
            f"{model}-{obj['objective']}-{obj.get('prediction', 'v')}-c{k}",
            settings(lab, model, obj, lab.args.seed + k),
            steps,
            part,
            k,
        )
        for k, obj in enumerate(objectives)
    ]


def ensemble(paths: list[Path], router: Path, strategy: str, top_k: int) -> Any:
    """The routed ensemble of expert checkpoints ``paths`` (expert k serves cluster k); nucleus
    keeps ``make_ensemble``'s default top_p."""
    from hetdiff.api import load_expert, make_ensemble

    return make_ensemble(
        [load_expert(p) for p in paths], str(router), cluster_ids=list(range(len(paths))),
        strategy=strategy, top_k=top_k, seed=0,
    )  # fmt: skip


def eval_ensemble(
    lab: Any, label: str, paths: list[Path], router: Path, strategy: str, model: str
) -> dict[str, Any]:
    k, top_k = len(paths), lab.args.top_k
    run = {"full": k, "top-k": top_k, "nucleus": k}.get(strategy, 1)  # experts run per NFE (max)
    key = {
        "experts": [str(p.relative_to(lab.cache)) for p in paths],
        "strategy": strategy,
        "router": str(router.relative_to(lab.cache)),
        "top_k": top_k,
    }
    return lab.evaluate(label, key, lambda: ensemble(paths, router, strategy, top_k), model, run)


def eval_single(
    lab: Any,
    label: str,
    path: Path,
    model: str,
    conditional: bool = True,
    own_cluster: int | None = None,
) -> dict[str, Any]:
    from hetdiff.api import load_expert

    key = {"model": str(path.relative_to(lab.cache))}
    return lab.evaluate(label, key, lambda: load_expert(path), model, 1.0, conditional, own_cluster)


def largest(lab: Any) -> tuple[int, int]:
    """(the largest monolith budget B, each expert's B / K)."""
    budget = lab.args.budgets[-1]
    return budget, budget // lab.args.k
