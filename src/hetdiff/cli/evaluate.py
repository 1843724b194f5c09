"""hetdiff evaluate: FID, diversity, router accuracy and FLOPs of an ensemble and its experts."""

from __future__ import annotations

import argparse

from hetdiff.config import EVALUATE_STRATEGIES, SOLVERS, STRATEGIES, EvalSettings, SampleSettings

_EVAL, _SAMPLE = EvalSettings(), SampleSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / diversity / router accuracy / FLOPs of an ensemble",
        description="Sample from the ensemble (each strategy) and each expert alone, then measure.",
    )
    p.add_argument("--experts", required=True, help="folder of expert checkpoints")
    p.add_argument("--router", required=True, help="router checkpoint or folder")
    p.add_argument("--partition", default=None, help="manifest: per-cluster FID, router accuracy")
    p.add_argument("--n", type=int, default=_EVAL.n, help="samples per model (%(default)s)")
    p.add_argument(
        "--reference-n", type=int, default=_EVAL.reference_n, help="real images for FID statistics"
    )
    p.add_argument(
        "--strategies", nargs="+", choices=STRATEGIES, default=list(EVALUATE_STRATEGIES),
        help="ensemble strategies to measure (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--top-k", type=int, default=_SAMPLE.top_k)
    p.add_argument("--top-p", type=float, default=_SAMPLE.top_p, help="top_p of nucleus")
    p.add_argument("--steps", type=int, default=_SAMPLE.steps)
    p.add_argument("--solver", choices=SOLVERS, default=_SAMPLE.solver)
    p.add_argument("--cfg", type=float, default=_SAMPLE.cfg)
    p.add_argument("--no-fid", action="store_true", help="skip Inception FID")
    p.add_argument(
        "--no-judge", action="store_true",
        help="skip the judge metrics (FD_judge, precision/recall/density/coverage, accuracy)",
    )  # fmt: skip
    p.add_argument(
        "--judge-steps", type=int, default=_EVAL.judge_steps,
        help="judge training steps (once per data set, then cached; default %(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="metrics JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hetdiff.pipeline.evaluate import evaluate_command

    settings = EvalSettings(
        n=args.n, fid=not args.no_fid, reference_n=args.reference_n, judge=not args.no_judge,
        judge_steps=args.judge_steps,
    )  # fmt: skip
    sample = SampleSettings(
        steps=args.steps, solver=args.solver, strategies=tuple(args.strategies), top_k=args.top_k,
        cfg=args.cfg, top_p=args.top_p,
    )  # fmt: skip
    evaluate_command(
        args.experts, args.router, args.out, args.partition, settings, sample, args.seed
    )
    return 0
