"""hetdiff run: the whole pipeline from one config file (the README's main command)."""

from __future__ import annotations

import argparse

QUICK = {
    "resolution": 16,
    "cluster": {"k": 2, "fine": 16, "features": "pixels"},
    "experts": [
        {"objective": "ddpm", "prediction": "eps", "schedule": "linear", "steps": 60},
        {"objective": "flow", "steps": 60},
    ],
    "router": {"steps": 60},
    "sample": {"n": 16, "steps": 8, "strategies": ["top1", "full"]},
    "evaluate": {"n": 16, "fid": False},  # FID at n = 16 would say nothing and cost a minute
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="the whole pipeline: cluster, experts, router, sample, evaluate, report",
        description="Run the pipeline end to end; a killed run resumes when started again.",
    )
    p.add_argument("config", nargs="?", default=None, help="TOML/YAML/JSON config (optional)")
    p.add_argument("--out", default="runs/default", help="run folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in ~2 minutes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.config import load_config
    from hetdiff.pipeline import Run

    config = load_config(args.config, QUICK if args.quick else None)
    metrics = Run(config, args.out).execute()
    for name, entry in metrics.get("strategies", {}).items():
        print(
            f"{name:>8}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float))
        )
    print(f"report: {args.out}/report.html")
    return 0
