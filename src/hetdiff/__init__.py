"""hetdiff: heterogeneous decentralized diffusion models.

K experts, each trained alone on one cluster of the data with its own objective (DDPM with any
schedule and prediction type, or flow matching), meet in one velocity space at inference, weighed
by a router. Time convention everywhere: t in [0, 1], t = 0 data, t = 1 noise,
x_t = (1 - t) x0 + t eps, velocity v = eps - x0.

The public API is ``__all__``; every name loads on first use (PEP 562 ``__getattr__``), so
``import hetdiff`` imports neither torch nor faiss, diffusers or transformers::

    import hetdiff
    ensemble = hetdiff.load_ensemble("runs/demo", strategy="top1")
    images = hetdiff.sample(ensemble, n=16, cfg=2.0, classes="giraffe")

The functions live in ``hetdiff.api``, the types in their own layers. Names are resolved with
``importlib`` from strings: modules low in the layers import this package for ``__version__``, so
a static import of the API here would make every layer seem to import the top one.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # load, wrap, compose
    "load_expert": "hetdiff.api.experts",
    "load_ensemble": "hetdiff.api.experts",
    "velocity_expert": "hetdiff.api.experts",
    "make_ensemble": "hetdiff.api.experts",
    "with_strategy": "hetdiff.api.experts",
    "UniformRouter": "hetdiff.api.experts",
    # sample
    "sample": "hetdiff.api.images",
    "save_images": "hetdiff.api.images",
    # train, cluster, run, read
    "train_expert": "hetdiff.api.jobs",
    "train_router": "hetdiff.api.jobs",
    "cluster": "hetdiff.api.jobs",
    "run": "hetdiff.api.jobs",
    "read_metrics": "hetdiff.api.jobs",
    "read_log": "hetdiff.api.jobs",
    # data
    "load_dataset": "hetdiff.data.datasets",
    # settings and their vocabularies
    "load_config": "hetdiff.config",
    "RunConfig": "hetdiff.config",
    "ClusterSettings": "hetdiff.config",
    "ExpertSettings": "hetdiff.config",
    "RouterSettings": "hetdiff.config",
    "SampleSettings": "hetdiff.config",
    "EvalSettings": "hetdiff.config",
    "QUICK": "hetdiff.config",
    "STRATEGIES": "hetdiff.config",
    "SOLVERS": "hetdiff.config",
    # the types the functions return
    "Ensemble": "hetdiff.sampling.ensemble",
    "VelocityModel": "hetdiff.objectives.velocity",
    "ExpertSpec": "hetdiff.experts.spec",
    "Conditioning": "hetdiff.conditioning",
    "HetdiffError": "hetdiff.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hetdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
