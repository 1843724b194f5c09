"""The papers' claims retested at small scale, in one resumable command (issue 18, part 3).

Parts (``--parts``, default all), each a function in ``benchmarks/evidence_parts.py``:

  flops          the monolith against a K = 4 ensemble (top1 and full) at equal training FLOPs
                 (monolith B steps, each expert B / 4, same batch and network) over ``--budgets``,
                 for ``--model`` and the smaller ``--small-model``; FD_judge against FLOPs (SVG),
                 the crossover if any, and whether the monolith's curve flattened
  mixed          at the largest budget: all-flow against 1 DDPM : 3 flow and 2 : 2 (DDPM experts
                 v-prediction on the cosine schedule, their best measured setting)
  partition      feature clusters against a random partition
  strategies     full, top-k, top1, sample (and nucleus when hetdiff has it), with their
                 sampling FLOPs counted
  warmstart      a DDPM-eps model pretrained on ``--pretrain-data`` (70k Fashion-MNIST), converted
                 to flow with and without ``--rehead``, fine-tuned on each cluster, against scratch
  decomposition  same-noise against different-noise pairs of monolith and ensemble samples
                 (deterministic Heun ODE), in judge features and pixels (DDM Fig. 5)

Every row carries 95% bootstrap intervals (``hetdiff.metrics.judged``: FD_judge, precision,
recall, coverage, class accuracy, cluster total variation), on n samples per row against the
judge's held-out real images. Writes ``--out`` (default ``docs/evidence.md``) with the exact
invocation and wall time, and its plots in the folder of the same name (``docs/evidence/``).

Resumable: every model is a safetensors checkpoint in ``--cache`` (default ``runs/evidence``)
keyed by its full settings and every evaluation a JSON file beside its samples, all written
atomically; a killed run started again skips what is finished and resumes training from the
last checkpoint (``benchmarks/evidence_lab.py``). ``--estimate`` prints the plan and its time
without running anything; ``--report-only`` writes what the cache holds so far (rows not run yet
read "pending") to ``<cache>/evidence-partial.md``; ``--smoke`` runs every part at tiny budgets on
8 px digits into a temporary cache (about a minute on one thread; the test in
tests/test_benchmarks.py).

Default run (``--model small``, ``--small-model tiny``, budgets 1000-8000 monolith steps, n = 1000
per row): 97 trainings (1158 TFLOP) and 85 evaluations (382 TFLOP of sampling), estimated at
5.5-7 hours on 2 idle cores (``--estimate`` prints the figure for the cache as it stands;
``--budgets 500,1000,2000,4000``: about 3.5 hours). A larger last budget later (until the
monolith's curve flattens) only trains on from the cached runs.

    python benchmarks/evidence.py [--parts flops,mixed,...] [--budgets 1000,2000,4000,8000]
        [--cache runs/evidence] [--out docs/evidence.md] [--estimate] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import xml.dom.minidom
from pathlib import Path

from hetdiff.threads import configure_this_process

configure_this_process()  # thread counts and OpenMP spin before torch loads (as the CLI does)

import torch  # noqa: E402

from evidence_lab import Lab  # noqa: E402
from evidence_parts import PARTS  # noqa: E402
from evidence_plan import fmt_duration  # noqa: E402
from evidence_report import Section  # noqa: E402
from hetdiff.config import EvalSettings, ExpertSettings, SampleSettings  # noqa: E402
from hetdiff.io import atomic_write_text  # noqa: E402

SMOKE = {  # every part at absurdly small budgets: a test of the machinery, not of the claims
    "data": "digits",
    "resolution": 8,
    "features": "pixels",
    "budgets": "8,16",
    "batch": 16,
    "n": 24,
    "sample_steps": 2,
    "router_steps": 4,
    "judge_steps": 60,
    "bootstrap": 10,
    "pretrain_steps": 8,
    "warm_steps": 8,
    "warm_evals": 2,
    "pretrain_data": "fashion-mnist",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument(
        "--budgets",
        default="1000,2000,4000,8000",
        help="monolith training steps per budget (each a multiple of --k)",
    )
    p.add_argument("--cache", default=None, help="models and evaluations (default runs/evidence)")
    p.add_argument("--out", default=None, help="the markdown (default docs/evidence.md)")
    p.add_argument("--data", default="mnist5k+animal-mnist")
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--features", default="efficientnet-lite0@64", help="clustering features")
    p.add_argument("--k", type=int, default=4, help="experts per ensemble")
    p.add_argument("--model", default="small", help="DiT of the main comparison")
    p.add_argument("--small-model", default="tiny", help="the smaller DiT of the flops part")
    p.add_argument("--batch", type=int, default=ExpertSettings().batch_size)
    p.add_argument("--lr", type=float, default=ExpertSettings().lr)
    p.add_argument("--router-steps", type=int, default=1000)
    p.add_argument("--n", type=int, default=1000, help="samples per evaluated row")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--solver", default="heun", choices=("euler", "heun"))
    p.add_argument("--cfg", type=float, default=SampleSettings().cfg)
    p.add_argument("--top-k", type=int, default=SampleSettings().top_k)
    p.add_argument("--judge-steps", type=int, default=EvalSettings().judge_steps)
    p.add_argument("--bootstrap", type=int, default=EvalSettings().bootstrap)
    p.add_argument("--pretrain-data", default="fashion-mnist")
    p.add_argument("--pretrain-steps", type=int, default=8000)
    p.add_argument("--warm-model", default="tiny")
    p.add_argument("--warm-steps", type=int, default=None, help="default: largest budget / k")
    p.add_argument("--warm-evals", type=int, default=4, help="checkpoints evaluated per arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--estimate", action="store_true", help="print the plan and its time; run nothing"
    )
    p.add_argument("--smoke", action="store_true", help="every part at tiny budgets (a test)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write a partial report from the cached evaluations (default --out: "
        "<cache>/evidence-partial.md); rows not run yet read pending; runs nothing",
    )
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            if f"--{name.replace('_', '-')}" not in (argv if argv is not None else sys.argv):
                setattr(args, name, value)
        args.cache = args.cache or tempfile.mkdtemp(prefix="evidence-smoke-")
        args.out = args.out or str(Path(args.cache) / "evidence.md")
    args.cache = args.cache or "runs/evidence"
    if args.report_only:
        args.out = args.out or str(Path(args.cache) / "evidence-partial.md")
    args.out = args.out or "docs/evidence.md"
    args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    try:
        args.budgets = sorted(int(b) for b in str(args.budgets).split(","))
    except ValueError:
        p.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if len(args.budgets) < 2 or any(b < args.k or b % args.k for b in args.budgets):
        p.error(f"--budgets needs at least two budgets, each a positive multiple of --k {args.k}")
    if args.n <= EvalSettings().nearest_k:
        p.error(f"--n must exceed the k-NN k ({EvalSettings().nearest_k})")
    args.warm_steps = args.warm_steps or args.budgets[-1] // args.k
    return args


def header(lab: Lab, args: argparse.Namespace, wall: float) -> str:
    spent = lab.compute_seconds()
    judge = lab.reference.judge
    spec = judge.spec
    accuracy = "" if spec is None else f" (held-out accuracy {spec.accuracy:.3f})"
    command = "python benchmarks/evidence.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return (
        "# Evidence: the papers' claims retested at small scale\n\n"
        f"Written by `benchmarks/evidence.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}.\n\n"
        f"- Invocation: `{command}`\n"
        f"- Wall time of this invocation: {fmt_duration(wall)}; time recorded by every "
        f"cached model and evaluation (over resumed invocations; wall clock, so it includes "
        f"any pause of the process): training "
        f"{fmt_duration(spent['train'])}, evaluation {fmt_duration(spent['eval'])}; "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}.\n"
        f"- Data: {args.data} at {args.resolution} px, class-conditional; K = {args.k} clusters "
        f"({args.features}); batch {args.batch}, lr {args.lr}.\n"
        f"- Metrics: n = {args.n} samples per row ({args.sample_steps} {args.solver} steps, cfg "
        f"{args.cfg}, seeds {lab.seeds[0]} + i, labels drawn from the data) against "
        f"{len(lab.reference.features)} held-out real images in the features of the judge"
        f"{accuracy}. Every interval is a 95% bootstrap interval ({args.bootstrap} draws; basic "
        "for Frechet distances, percentile otherwise). Lower FD_judge and cluster TV are better; "
        "higher precision, recall, coverage and class accuracy. A verdict says one arm beats "
        "another only when their intervals do not overlap.\n"
        f"- Parts in this file: {', '.join(args.parts)}.\n"
        + (
            f"- **Partial** (`--report-only`): {lab.progress.planned['eval']} evaluations and "
            f"{lab.progress.planned['model']} trainings of this plan have not run; their rows "
            "read pending and the verdicts and plots that use them are not final.\n"
            if args.report_only
            else ""
        )
    )


def write(args: argparse.Namespace, lab: Lab, sections: list[Section], wall: float) -> None:
    out = Path(args.out)
    plots = out.with_suffix("")
    plots.mkdir(parents=True, exist_ok=True)
    body = [header(lab, args, wall)]
    for section in sections:
        text = section.text.replace("](evidence/", f"]({plots.name}/")
        body.append(f"## {section.title}\n\n{text}")
        for name, svg in section.plots.items():
            if svg.lstrip().startswith("<svg"):
                xml.dom.minidom.parseString(svg)  # a plot that does not parse is a bug here
            atomic_write_text(plots / name, svg)
    atomic_write_text(out, "\n".join(body))
    print(f"wrote {out} and {sum(len(s.plots) for s in sections)} plot(s) in {plots}/")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    lab = Lab(args)
    planned = [PARTS[name](lab) for name in args.parts]  # the planning pass: runs nothing
    if args.report_only:  # the planning pass's sections, with the cached evaluations' rows
        write(args, lab, planned, time.time() - started)
        return
    lab.begin()
    if args.estimate:
        return
    sections = []
    for name in args.parts:
        lab.log(f"part {name}: start")
        sections.append(PARTS[name](lab))
        lab.log(f"part {name}: done")
    wall = time.time() - started
    write(args, lab, sections, wall)
    lab.log(f"finished in {fmt_duration(wall)}")


if __name__ == "__main__":
    main()
