"""Read a run's metrics and training logs and plot them (SVG; no plotting library needed).

    python examples/plot_run_metrics.py --run runs/demo            # a finished `hetdiff run`
    python examples/plot_run_metrics.py --run runs/tiny --tiny     # first run a tiny pipeline

Writes ``losses.svg`` (each expert's and the router's training loss) and ``router.svg`` (the
router's accuracy per t bucket against always guessing the largest cluster) into the run folder.
"""

import argparse
import json
from pathlib import Path

import hetdiff
from hetdiff.report.svg import line_chart

parser = argparse.ArgumentParser()
parser.add_argument("--run", required=True, help="a hetdiff run folder")
parser.add_argument("--tiny", action="store_true", help="first run a ~20 s pipeline into --run")
args = parser.parse_args()
run = Path(args.run)

if args.tiny:  # the pipeline from a config object: digits at 8 px, 2 experts of 2 objectives
    config = hetdiff.RunConfig(
        data="digits", resolution=8,
        cluster=hetdiff.ClusterSettings(k=2, fine=8, features="pixels"),
        experts=(hetdiff.ExpertSettings(objective="ddpm", steps=30, batch_size=32),
                 hetdiff.ExpertSettings(objective="flow", steps=30, batch_size=32)),
        router=hetdiff.RouterSettings(steps=30, batch_size=32),
        sample=hetdiff.SampleSettings(n=8, steps=4, strategies=("top1", "full")),
        evaluate=hetdiff.EvalSettings(n=8, fid=False),
    )  # fmt: skip
    hetdiff.run(config, run)

metrics = hetdiff.read_metrics(run)
logs = {
    path.parent.name: hetdiff.read_log(path.parent) for path in sorted(run.glob("*/*/log.jsonl"))
}
logs["router"] = hetdiff.read_log(run / "router")
series = [
    (name, [r["step"] for r in rows], [r["loss"] for r in rows]) for name, rows in logs.items()
]
(run / "losses.svg").write_text(line_chart(series, "training loss", "step", "loss"))

buckets = metrics["router_by_t"]
t_mid = [(b["t_lo"] + b["t_hi"]) / 2 for b in buckets]
router = [("router", t_mid, [b["accuracy"] for b in buckets]),
          ("largest cluster", t_mid, [b["prior_accuracy"] for b in buckets])]  # fmt: skip
(run / "router.svg").write_text(line_chart(router, "router accuracy per t", "t", "accuracy"))

for name, entry in metrics["strategies"].items():
    print(
        f"{name:>6}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float))
    )
print(json.dumps({"losses": {n: [r["loss"] for r in rows] for n, rows in logs.items()},
                  "router_accuracy": [b["accuracy"] for b in buckets],
                  "plots": [str(run / "losses.svg"), str(run / "router.svg")]}))  # fmt: skip
