"""Crash and concurrency tests of run_over (issue 12): a process killed with SIGKILL at several
points of a run, its files then truncated or corrupted; every rerun ends equal to an
uninterrupted run or with a clear error naming the damaged file. Two runs started together on
one folder give one result, equal to a single run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnbrain_captum import read_results, run_over

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "helpers" / "runner_job.py"
N, BATCH = 12, 3  # 4 chunks


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _job(out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(JOB), str(out), "saliency", str(N), str(BATCH), *extra]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=out.parent,
    )


def _rerun(out: Path) -> np.ndarray:
    sys.path.insert(0, str(JOB.parent))
    try:
        from runner_job import make
    finally:
        sys.path.remove(str(JOB.parent))
    from dnnbrain_captum import digits_images

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job: the same arithmetic
    try:
        attribution, _ = make("saliency")
        images, labels = digits_images(n=N)
        run_over(attribution, images, targets=labels, out=out, batch_size=BATCH)
    finally:
        torch.set_num_threads(threads)
    return np.array(read_results(out))


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> np.ndarray:  # noqa: ANN001
    return _rerun(tmp_path_factory.mktemp("uninterrupted") / "run")


def _data_file(out: Path) -> Path | None:
    for name in ("result.partial.npy", "result.npy"):
        if (out / name).is_file():
            return out / name
    return None


def _damage(out: Path, how: str) -> None:
    data = _data_file(out)
    if how == "truncate" and data is not None:
        os.truncate(data, data.stat().st_size // 2)
    elif how == "flip" and data is not None:
        with open(data, "r+b") as f:
            f.seek(200)
            block = bytearray(f.read(64))
            f.seek(200)
            f.write(bytes(b ^ 0xA5 for b in block))
    elif how == "false-line":
        with open(out / "result.partial.done", "a") as f:
            f.write(json.dumps({"chunk": 3, "sha256": "0" * 64, "skipped": []}) + "\n")
            f.write('{"chunk": 1, "sha256": "')
    elif how == "manifest":
        (out / "manifest.json").write_text('{"format": "dnnbrain_captum.run", "status": [')


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("rows:0", marks=pytest.mark.slow),
        "rows:2",
        pytest.param("assemble", marks=pytest.mark.slow),
        "manifest",
    ],
)
def test_killed_and_damaged_runs_resume_exactly_or_name_the_file(
    point,
    tmp_path,  # noqa: ANN001
    expected,
) -> None:
    killed = tmp_path / "killed"
    process = _job(killed, "--kill-at", point)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    for how in ("none", "truncate", "flip", "false-line", "manifest"):
        out = tmp_path / how
        shutil.copytree(killed, out)
        _damage(out, how)
        if how == "manifest":
            with pytest.raises(ValueError, match=f"{out / 'manifest.json'} is not valid JSON"):
                _rerun(out)
            continue
        assert np.array_equal(_rerun(out), expected), (point, how)
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]


def test_two_runs_started_together_give_one_result(tmp_path, expected) -> None:  # noqa: ANN001
    out = tmp_path / "shared"
    processes = [_job(out, "--sleep", "1") for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in processes]
    succeeded = [code for code, _ in outcomes if code == 0]
    assert succeeded, outcomes
    for code, stderr in outcomes:
        assert code == 0 or f"output folder {out} is in use by another run: process" in stderr
    assert np.array_equal(np.array(read_results(out)), expected)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]
