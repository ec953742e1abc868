"""run_over across processes: torchrun with 2 ranks on loopback equals one process; a killed run
resumes to the uninterrupted result.

The default suite runs the jobs on a tiny attribution (a 1x1 convolution, no Captum imported:
each process starts in about the time of ``import torch``); the ``slow`` variants run the digits
model's occlusion and saliency."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnbrain_captum import read_results, run_over
from dnnbrain_captum.runner import read_manifest
from tests.helpers.runner_job import make

JOB = Path(__file__).parent / "helpers" / "runner_job.py"
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summaries(stdout: str) -> list[dict[str, int]]:
    return [json.loads(line[8:]) for line in stdout.splitlines() if line.startswith("SUMMARY ")]


def _inputs(method: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if method == "tiny":
        from tests.helpers.runner_tiny import tiny_data

        return tiny_data(n), None
    from dnnbrain_captum import digits_images

    return digits_images(n=n)


def _single_process(method: str, n: int, batch: int, out: Path) -> np.ndarray:
    """The reference: the same run in this process, with one thread like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attribution, kwargs = make(method)
        images, labels = _inputs(method, n)
        run_over(attribution, images, targets=labels, out=out, batch_size=batch, **kwargs)
    finally:
        torch.set_num_threads(threads)
    return np.asarray(read_results(out))


def _check_distributed(out: Path, n: int, item_shape: tuple[int, ...], single: Path) -> None:
    manifest = read_manifest(out)
    chunks = manifest["chunks"]
    assert manifest["world_size"] == 2 and manifest["status"] == "complete"
    assert [c["rank"] for c in chunks] == [0, 1, 0, 1, 0, 1]
    covered = sorted(i for c in chunks for i in range(c["start"], c["stop"]))
    assert covered == list(range(n))  # every item exactly once
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]
    distributed = np.asarray(read_results(out))
    assert distributed.shape == (n, *item_shape)
    assert np.array_equal(distributed, np.asarray(read_results(single)))
    # the same run: the single-process manifest's request is identical
    assert read_manifest(single)["request"] == manifest["request"]


@pytest.mark.parametrize(
    "method, item_shape",
    [("tiny", (3, 4, 4)), pytest.param("occlusion", (7, 7), marks=pytest.mark.slow)],
)
def test_torchrun_two_ranks_equals_single_process(
    method: str, item_shape: tuple[int, ...], tmp_path: Path
) -> None:
    """One torchrun job, two runs: ranks on one host write rows in place into one result file;
    then, as if on two hosts (host names faked), each rank writes chunk files, which rank 0
    copies into result.npy."""
    n, batch = 22, 4  # 6 chunks, the last one short; rank 0 gets 3 chunks (12), rank 1 3 (10)
    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            str(JOB),
            str(one),
            method,
            str(n),
            str(batch),
            "--then-fake-hosts",
            str(two),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summaries = sorted(_summaries(done.stdout), key=lambda s: s["rank"])
    assert [(s["rank"], s["world"], s["computed"]) for s in summaries] == [
        (0, 2, 12),
        (0, 2, 12),
        (1, 2, 10),
        (1, 2, 10),
    ]
    _single_process(method, n, batch, tmp_path / "single")
    for out in (one, two):
        _check_distributed(out, n, item_shape, tmp_path / "single")


@pytest.mark.parametrize("method", ["tiny", pytest.param("saliency", marks=pytest.mark.slow)])
def test_killed_run_resumes_to_the_uninterrupted_result(method: str, tmp_path: Path) -> None:
    n, batch = 20, 4  # 5 chunks
    out = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, str(JOB), str(out), method, str(n), str(batch), "--die-after", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr[-3000:]  # died abruptly inside the third chunk
    left = sorted(p.name for p in out.iterdir())
    # a killed run leaves its lock (no longer held) and its private folder, taken over next time
    assert left == [
        ".dnnbrain-run.lock",
        ".dnnbrain-run.tmp",
        "manifest.json",
        "result.partial.done",
        "result.partial.npy",
    ]
    logged = (out / "result.partial.done").read_text().splitlines()
    assert [json.loads(line)["chunk"] for line in logged] == [0, 1]
    assert read_manifest(out)["status"] == "running"
    with pytest.raises(ValueError, match=r"not complete \(2 of 5 chunks done\)"):
        read_results(out)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attribution, kwargs = make(method)
        images, labels = _inputs(method, n)
        summary = run_over(attribution, images, targets=labels, out=out, batch_size=batch)
    finally:
        torch.set_num_threads(threads)
    assert (summary.reused, summary.computed) == (8, 12)
    uninterrupted = _single_process(method, n, batch, tmp_path / "whole")
    assert np.array_equal(np.asarray(read_results(out)), uninterrupted)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]
