"""Picking a launcher by name (``hetdiff.config.LAUNCHERS``)."""

from __future__ import annotations

from hetdiff.errors import HetdiffError
from hetdiff.launch.base import Launcher


def make_launcher(name: str, workers: int = 1) -> Launcher:
    """The launcher called ``name`` (``hetdiff.config.LAUNCHERS``); ``workers`` bounds the local
    launcher's processes at a time."""
    if name == "local":
        from hetdiff.launch.local import LocalLauncher

        return LocalLauncher(workers)
    if name == "slurm":
        from hetdiff.launch.slurm import SlurmLauncher

        return SlurmLauncher()
    if name == "ray":
        from hetdiff.launch.ray_cluster import RayLauncher

        return RayLauncher()
    raise HetdiffError(f"unknown launcher {name!r}; use local, slurm or ray")
