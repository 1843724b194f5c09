"""Where each expert trains: this machine (``local``), a Slurm cluster (``slurm``, through
submitit) or a Ray cluster (``ray``), behind one interface (``base.Launcher``)."""

from hetdiff.launch.base import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    ExpertSubmission,
    Launcher,
    committed_state,
    read_record,
)
from hetdiff.launch.launchers import make_launcher

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "PENDING",
    "RUNNING",
    "ExpertSubmission",
    "Launcher",
    "committed_state",
    "make_launcher",
    "read_record",
]
