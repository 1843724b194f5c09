"""The objectives an expert can be trained with, and what each one needs.

The one place that knows which predictions and schedules go with which objective. Everything
outside ``objectives/``, the spec (``experts/spec.py``) and the one builder (``experts/build.py``)
asks these functions instead of comparing objective names.

    flow: the network predicts the velocity v = eps - x0 on x_t = (1 - t) x0 + t eps; no schedule.
    ddpm: the network predicts eps, x0 or v_ddpm on x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps
          over a discrete schedule (linear, cosine, scaled_linear or a table).
"""

from __future__ import annotations

from hetdiff.errors import HetdiffError
from hetdiff.objectives.paths import DDPM_PREDICTIONS
from hetdiff.objectives.schedules import SCHEDULE_NAMES

FLOW, DDPM = "flow", "ddpm"
OBJECTIVES = (FLOW, DDPM)
PREDICTIONS: dict[str, tuple[str, ...]] = {FLOW: ("velocity",), DDPM: DDPM_PREDICTIONS}
ALL_PREDICTIONS = tuple(p for objective in OBJECTIVES for p in PREDICTIONS[objective])
DEFAULT_SCHEDULE = "linear"  # a DDPM expert without a named schedule
NAMED_SCHEDULES = tuple(n for n in SCHEDULE_NAMES if n != "table")  # what a user may name


def check_objective_name(objective: object, where: str = "objective") -> str:
    """``objective`` if it is one of ``OBJECTIVES``; else a one-line HetdiffError."""
    if objective not in OBJECTIVES:
        raise HetdiffError(f"{where} {objective!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    return str(objective)


def default_prediction(objective: str) -> str:
    """What the network predicts when its owner does not say: velocity (flow), eps (ddpm)."""
    return PREDICTIONS[check_objective_name(objective)][0]


def uses_schedule(objective: str) -> bool:
    """True when the objective trains on a discrete noise schedule (ddpm)."""
    return check_objective_name(objective) == DDPM


def allows_learned_variance(objective: str) -> bool:
    """True when the network may carry extra variance channels (ddpm, dropped when read)."""
    return check_objective_name(objective) == DDPM


def resolve_objective(
    objective: object,
    prediction: object = None,
    schedule: object = None,
    learned_variance: object = False,
    where: str = "",
) -> tuple[str, str, str | None]:
    """Check one objective triple; return (objective, prediction, schedule name or None).

    ``prediction`` None takes ``default_prediction``; ``schedule`` None takes
    ``DEFAULT_SCHEDULE`` for ddpm. A flow objective refuses a DDPM prediction, a schedule and
    learned variance. ``where`` prefixes the names in error messages (e.g. "experts[2].").
    """
    objective = check_objective_name(objective, f"{where}objective")
    allowed = PREDICTIONS[objective]
    if prediction is None:
        prediction = allowed[0]
    if prediction not in allowed:
        raise HetdiffError(
            f"{where}prediction {prediction!r} does not fit objective {objective!r}; use one of "
            f"{', '.join(allowed)}"
        )
    if uses_schedule(objective):
        schedule = DEFAULT_SCHEDULE if schedule is None else schedule
        if schedule not in NAMED_SCHEDULES:
            raise HetdiffError(
                f"{where}schedule {schedule!r} is unknown; use one of {', '.join(NAMED_SCHEDULES)}"
            )
    elif schedule is not None:
        raise HetdiffError(f"{where}schedule is for ddpm experts; a {objective} expert takes none")
    if not isinstance(learned_variance, bool):
        raise HetdiffError(
            f"{where}learned_variance must be true or false, got {learned_variance!r}"
        )
    if learned_variance and not allows_learned_variance(objective):
        raise HetdiffError(f"{where}learned_variance applies to ddpm experts only; set it to false")
    return objective, str(prediction), None if schedule is None else str(schedule)
