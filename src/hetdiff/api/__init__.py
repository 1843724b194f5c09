"""The public Python API: what ``import hetdiff`` exposes (``hetdiff.__all__``).

Load experts and ensembles, wrap your own network as a velocity expert, sample images, train
experts and routers, cluster a data set, and run the whole pipeline from a config object. Each
function is a thin layer over the library function its command calls, so the notebook and the
command line behave the same. Import it as ``import hetdiff``; nothing heavy loads until a name
is used.
"""

from hetdiff.api.experts import (
    UniformRouter,
    load_ensemble,
    load_expert,
    make_ensemble,
    velocity_expert,
    with_strategy,
)
from hetdiff.api.images import sample, save_images
from hetdiff.api.jobs import cluster, read_log, read_metrics, run, train_expert, train_router

__all__ = [
    "UniformRouter",
    "cluster",
    "load_ensemble",
    "load_expert",
    "make_ensemble",
    "read_log",
    "read_metrics",
    "run",
    "sample",
    "save_images",
    "train_expert",
    "train_router",
    "velocity_expert",
    "with_strategy",
]
