"""How long `import hetdiff` takes, against `import torch` alone (issue 17: under 1.5x).

Each measurement is a fresh Python process that times its own import statement with
``time.perf_counter`` (interpreter start-up excluded); the cases are interleaved run by run, so
a load spike on the machine hits all of them alike, and the median of ``--runs`` is reported:

    torch             import torch
    hetdiff           import hetdiff                       (the package: no torch, by design)
    hetdiff + api     import hetdiff; hetdiff.sample       (the API functions, which load torch)
    hetdiff + all     import hetdiff; every name of hetdiff.__all__

    python benchmarks/import_time.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = {
    "torch": "import torch",
    "hetdiff": "import hetdiff",
    "hetdiff + api": "import hetdiff; hetdiff.sample",
    "hetdiff + all": "import hetdiff\nfor name in hetdiff.__all__: getattr(hetdiff, name)",
}
PROBE = """import time, sys
start = time.perf_counter()
{code}
elapsed = time.perf_counter() - start
heavy = [m for m in ("torch", "faiss", "diffusers", "transformers") if m in sys.modules]
print(elapsed, ",".join(heavy))
"""


def measure(code: str) -> tuple[float, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds, heavy = (done.stdout.strip().split(" ") + [""])[:2]
    return float(seconds), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="processes per case (median)")
    args = parser.parse_args()
    for code in CASES.values():  # warm the file cache once
        measure(code)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    loaded: dict[str, str] = {}
    for _ in range(args.runs):
        for name, code in CASES.items():
            seconds, loaded[name] = measure(code)
            times[name].append(seconds)
    torch_median = statistics.median(times["torch"])
    results = {}
    print(f"{'case':<15} {'median s':>9} {'min s':>7} {'x torch':>8}  modules loaded")
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {"median_s": median, "ratio": median / torch_median, "runs": values}
        print(
            f"{name:<15} {median:>9.3f} {min(values):>7.3f} {median / torch_median:>8.2f}  "
            f"{loaded[name] or '-'}"
        )
    print(json.dumps({name: round(r["ratio"], 3) for name, r in results.items()}))


if __name__ == "__main__":
    main()
