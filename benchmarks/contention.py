"""Throughput of `hetdiff train-expert` beside busy neighbours, runtime thread defaults against
hetdiff's thread policy (threads = available cores / parallel workers, passive OpenMP waits).

Arms, each timed as the wall time of `--steps` optimizer steps of a tiny expert on `digits`:
  alone      one process on the machine
  two        two processes started together (the pipeline's `workers = 2` on 2 cores)
  load       one process beside `--load` busy neighbours (other train-expert processes)
Printed per policy: steps/s, and the ratios the issue asks for:
  two-at-once aggregate / alone = 2 * t_alone / t_two      (target >= 0.9)
  beside load / alone          = t_alone / t_load          (no collapse: compare policies)
"runtime" runs with torch's own defaults (threads = all cores, default OpenMP wait policy) and
`HETDIFF_THREAD_DEFAULTS=runtime`; "hetdiff" gives each of the N processes started together
`available cores / N` threads and a short OpenMP spin, GOMP_SPINCOUNT=10000 (what `hetdiff run`
does).

    python benchmarks/contention.py --steps 300 --load 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hetdiff.threads import OFF_SWITCH, thread_env


def _env(policy: str, workers: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    if policy == "runtime":
        return {**base, OFF_SWITCH: "runtime"}
    return thread_env(workers, base)


def _command(work: Path, name: str, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "hetdiff", "train-expert", "--data", "digits", "--resolution", "8",
        "--objective", "flow", "--steps", str(steps), "--batch-size", "64",
        "--checkpoint-every", str(steps), "--no-progress", "--out", str(work / name),
    ]  # fmt: skip


def _timed(work: Path, policy: str, steps: int, count: int, neighbours: int = 0) -> float:
    """Start ``count`` measured processes (plus ``neighbours`` long-running ones, started first
    and stopped after); returns the wall time until the measured ones finish."""
    procs_bg = []
    for i in range(neighbours):
        cmd = _command(work, f"bg-{policy}-{i}-{time.time_ns()}", steps * 100)
        procs_bg.append(subprocess.Popen(cmd, env=_env(policy, neighbours + count),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    if neighbours:
        time.sleep(3.0)  # let the neighbours get past start-up and load the cores
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            _command(work, f"{policy}-{count}-{i}-{time.time_ns()}", steps),
            env=_env(policy, count + neighbours),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"train-expert failed:\n{out}")
    elapsed = time.perf_counter() - t0
    for proc in procs_bg:
        proc.kill()
        proc.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--load", type=int, default=4, help="busy neighbours in the load arm")
    parser.add_argument("--policies", nargs="+", default=["runtime", "hetdiff"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _timed(work, "hetdiff", 20, 1)  # warm caches (data decoding, imports)
        rows = []
        for policy in args.policies:
            alone = _timed(work, policy, args.steps, 1)
            two = _timed(work, policy, args.steps, 2)
            load = _timed(work, policy, args.steps, 1, neighbours=args.load)
            rows.append((policy, alone, two, load))
            print(f"{policy}: alone {alone:.1f} s, two {two:.1f} s, beside {args.load}: {load:.1f} s",
                  flush=True)  # fmt: skip
    print(f"\n{args.steps} steps of train-expert --data digits (8 px, batch 64), load before: "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        "| policy | alone steps/s | two at once, aggregate steps/s | aggregate / alone | "
        f"beside {args.load} steps/s | beside / alone |"
    )
    print("|---|---|---|---|---|---|")
    for policy, alone, two, load in rows:
        s = args.steps
        print(f"| {policy} | {s / alone:.1f} | {2 * s / two:.1f} | {2 * alone / two:.2f} | "
              f"{s / load:.1f} | {alone / load:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
