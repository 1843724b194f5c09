"""``hetdiff run`` and the library entry points the command line calls (the top library layer)."""

from hetdiff.pipeline.command import run_pipeline
from hetdiff.pipeline.run import STAGES, Run

__all__ = ["STAGES", "Run", "run_pipeline"]
