"""Everything a user asks for, with every default once: settings types, presets, loading.

``settings.py`` holds the frozen settings types and the names a user may choose from,
``loading.py`` reads a run config (file, preset, overrides) and validates it as a whole,
``fields.py`` the shared field checks.
"""

from hetdiff.config.fields import build_settings
from hetdiff.config.loading import load_config, read_config_file, validate_run
from hetdiff.config.settings import (
    EVALUATE_STRATEGIES,
    LAUNCHERS,
    MIXED_PRECISION,
    PRESETS,
    QUICK,
    ROUTER_ARCHS,
    ROUTER_SIZES,
    SOLVERS,
    SPACINGS,
    STRATEGIES,
    TIME_SAMPLINGS,
    ClusterSettings,
    DistillSettings,
    EvalSettings,
    ExpertSettings,
    ResourceSettings,
    RouterSettings,
    RunConfig,
    SampleSettings,
)
from hetdiff.config.shards import ExportSettings, FeatureSettings, SplitSettings, StreamSettings

__all__ = [
    "EVALUATE_STRATEGIES",
    "LAUNCHERS",
    "MIXED_PRECISION",
    "PRESETS",
    "QUICK",
    "ROUTER_ARCHS",
    "ROUTER_SIZES",
    "SOLVERS",
    "SPACINGS",
    "STRATEGIES",
    "TIME_SAMPLINGS",
    "ClusterSettings",
    "DistillSettings",
    "EvalSettings",
    "ExpertSettings",
    "ExportSettings",
    "FeatureSettings",
    "ResourceSettings",
    "RouterSettings",
    "RunConfig",
    "SampleSettings",
    "SplitSettings",
    "StreamSettings",
    "build_settings",
    "load_config",
    "read_config_file",
    "validate_run",
]
