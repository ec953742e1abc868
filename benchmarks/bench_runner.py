"""Throughput of run_over: 1 process vs torchrun with 2 processes, and its overhead vs a bare loop.

    python benchmarks/bench_runner.py [--n 256] [--batch 32] [--repeats 3]

For saliency (VanillaSaliencyImage, conv5, target = each image's label as a conv5 channel) and
occlusion (OccluderDiscrepancyMapping, conv5, 8×8 windows, stride 4 -> 7×7 map) over the first
``n`` held-out digits images, with one thread per process:

* ``bare loop``: ``attribute`` on consecutive batches, results kept in memory (no files);
* ``run_over, 1 process``: the runner into a fresh folder (chunks, manifest, assembly);
* ``torchrun, 2 processes``: the runner under ``torchrun --nproc_per_node=2`` (gloo, loopback),
  timed inside rank 0 around the ``run_over`` call, after the process group is set up (includes
  the ranks' coordination, assembly and manifest); the end-to-end wall time of the
  ``torchrun`` command (process start-up, imports, process-group set-up) is reported beside
  it, and the CPU seconds of ``run_over`` summed over the ranks beside the 1-process run's (on
  a machine shared with other programs, wall-clock speed-ups also reflect the larger share of
  CPU that two processes get).

Both sides get the same batches of the same tensor (``images[i : i + batch]``) with the same
per-item targets, one thread, a fresh attribution object per repetition. Items/s are the best
of ``--repeats`` interleaved (bare, runner) pairs (the order inside a pair alternates); the
overhead is the median over the pairs of ``(runner − bare) / bare``, in wall time and in this
process's CPU time (user + system, less sensitive to other programs on a busy machine), and the
best runner time against the best bare time (CPU). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnnbrain_captum import (  # noqa: E402
    OccluderDiscrepancyMapping,
    VanillaSaliencyImage,
    digits_cnn,
    digits_images,
    read_results,
    run_over,
)

OCCLUSION = {"sliding_window_shapes": (8, 8), "strides": (4, 4)}


def make(method: str):  # noqa: ANN201
    model = digits_cnn()
    if method == "saliency":
        return VanillaSaliencyImage(model, "conv5"), {}
    return OccluderDiscrepancyMapping(model, "conv5"), dict(OCCLUSION)


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bare_loop(
    method: str, images: torch.Tensor, labels: torch.Tensor, batch: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for attribute calls on consecutive batches."""
    attribution, kwargs = make(method)
    wall, cpu = _clocks()
    parts = []
    for i in range(0, len(images), batch):
        target = labels[i : i + batch].tolist()
        parts.append(attribution.attribute(images[i : i + batch], target=target, **kwargs))
    torch.cat(parts)
    return time.perf_counter() - wall, time.process_time() - cpu


def runner(
    method: str, images: torch.Tensor, labels: torch.Tensor, batch: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of run_over into a fresh folder (chunks, manifest, assembly)."""
    attribution, kwargs = make(method)
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = _clocks()
        run_over(
            attribution, images, targets=labels.tolist(), out=folder, batch_size=batch, **kwargs
        )
        result = time.perf_counter() - wall, time.process_time() - cpu
        assert read_results(folder).shape[0] == len(images)
    return result


def worker(method: str, n: int, batch: int, out: str) -> None:
    """One torchrun rank: time run_over and print rank 0's seconds."""
    torch.set_num_threads(1)
    images, labels = digits_images(n=n)
    attribution, kwargs = make(method)
    dist = torch.distributed
    dist.init_process_group("gloo")  # rendezvous outside the timing (run_over reuses the group)
    dist.barrier()
    start, cpu = _clocks()
    summary = run_over(
        attribution, images, targets=labels.tolist(), out=out, batch_size=batch, **kwargs
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    sys.stdout.write(
        "RESULT " + json.dumps({"rank": summary.rank, "seconds": seconds, "cpu": cpu}) + "\n"
    )
    dist.destroy_process_group()


def torchrun(method: str, n: int, batch: int) -> tuple[float, float, float]:
    """(rank 0's run_over seconds, end-to-end wall seconds, CPU seconds summed over ranks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                __file__,
                "worker",
                method,
                str(n),
                str(batch),
                folder,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    ranks = [json.loads(x[7:]) for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    rank0 = next(r for r in ranks if r["rank"] == 0)
    return rank0["seconds"], wall, sum(r["cpu"] for r in ranks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="saliency,occlusion")
    parser.add_argument("--no-torchrun", action="store_true", help="skip the 2-process runs")
    if sys.argv[1:2] == ["worker"]:  # a torchrun rank: worker METHOD N BATCH OUT
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = digits_images(n=args.n)
    rows = []
    for method in args.methods.split(","):
        bare_loop(method, images[: args.batch], labels[: args.batch], args.batch)  # warm-up
        runner(method, images[: args.batch], labels[: args.batch], args.batch)  # warm-up
        bare, run = [], []
        for i in range(args.repeats):  # interleaved pairs, alternating which goes first
            if i % 2:
                run.append(runner(method, images, labels, args.batch))
                bare.append(bare_loop(method, images, labels, args.batch))
            else:
                bare.append(bare_loop(method, images, labels, args.batch))
                run.append(runner(method, images, labels, args.batch))
        dist = (
            [(math.nan,) * 3]
            if args.no_torchrun
            else [torchrun(method, args.n, args.batch) for _ in range(max(1, args.repeats // 2))]
        )
        pairs = list(zip(bare, run, strict=True))
        wall_overhead = statistics.median((r[0] - b[0]) / b[0] for b, r in pairs)
        cpu_overhead = statistics.median((r[1] - b[1]) / b[1] for b, r in pairs)
        best_cpu = min(r[1] for r in run) / min(b[1] for b in bare) - 1
        rows.append(
            (
                method,
                args.n / min(b[0] for b in bare),
                args.n / min(r[0] for r in run),
                100 * wall_overhead,
                100 * cpu_overhead,
                100 * best_cpu,
                args.n / min(d[0] for d in dist),
                args.n / min(d[1] for d in dist),
                statistics.median(r[1] for r in run),
                statistics.median(d[2] for d in dist),
            )
        )
    print(
        f"n={args.n} batch={args.batch} repeats={args.repeats} torch={torch.__version__} "
        f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.1f}"
    )
    print(
        "| method | bare loop (items/s) | run_over, 1 process (items/s) | runner overhead, "
        "wall (median of pairs) | runner overhead, CPU time (median of pairs) | runner "
        "overhead, CPU time (best vs best) | torchrun 2 processes, run_over (items/s) | "
        "torchrun 2 processes, end to end (items/s) | CPU s, 1 process | CPU s, 2 processes "
        "(sum) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, b, r, wall, cpu, best, inner, end, cpu1, cpu2 in rows:
        print(
            f"| {method} | {b:.0f} | {r:.0f} | {wall:+.1f} % | {cpu:+.1f} % | {best:+.1f} % | "
            f"{inner:.0f} | {end:.0f} | {cpu1:.2f} | {cpu2:.2f} |"
        )


if __name__ == "__main__":
    main()
