"""How long ``dnnbrain-captum --help`` takes, as a ratio to ``python -c "import torch"``.

Both commands run as fresh processes, alternating, ``--repeats`` times each; the report
gives the best and the median of each and the ratio of the medians. A ratio near or above 1
means ``--help`` imports torch (or more); a lazy command line answers in a fraction of it.
Also reports whether the help run imported torch at all (``-X importtime``).

Run: ``python benchmarks/bench_cli_help.py [--repeats 5]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELP = [sys.executable, "-m", "dnnbrain_captum.cli", "--help"]
SUB_HELP = [sys.executable, "-m", "dnnbrain_captum.cli", "saliency", "--help"]
TORCH = [sys.executable, "-c", "import torch"]


def _seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _imports_torch(command: list[str], env: dict[str, str]) -> bool:
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {"help": [], "saliency --help": [], "import torch": []}
    for _ in range(args.repeats):  # alternate, so load changes hit all three alike
        times["help"].append(_seconds(HELP, env))
        times["saliency --help"].append(_seconds(SUB_HELP, env))
        times["import torch"].append(_seconds(TORCH, env))
    base = statistics.median(times["import torch"])
    print(f"{'command':18s} {'best s':>8s} {'median s':>9s} {'/ import torch':>15s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:18s} {min(values):8.2f} {median:9.2f} {median / base:15.2f}")
    print("dnnbrain-captum --help imports torch:", _imports_torch(HELP, env))


if __name__ == "__main__":
    main()
