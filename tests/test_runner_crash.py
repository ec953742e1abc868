"""Crash and concurrency tests of run_over (issue 12): a process killed with SIGKILL at several
points of a run, its files then truncated or corrupted; every rerun ends equal to an
uninterrupted run or with a clear error naming the damaged file. Two runs started together on
one folder give one result, equal to a single run.

The default suite runs them on a tiny attribution (a 1x1 convolution of 4x4 images, no Captum
imported: a subprocess starts in about the time of ``import torch``) at two kill points; the
``slow`` variant runs the digits model's saliency at all four points (see docs/runner.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnbrain_captum.runner import read_results, run_over
from tests.helpers.runner_job import make

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "helpers" / "runner_job.py"
SIZES = {"tiny": (8, 2), "saliency": (12, 3)}  # method: (items, batch size) -> 4 chunks
DAMAGES = ("none", "truncate", "flip", "false-line", "manifest")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _job(out: Path, method: str, *extra: str) -> subprocess.Popen:
    n, batch = SIZES[method]
    command = [sys.executable, str(JOB), str(out), method, str(n), str(batch), *extra]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=out.parent,
    )


def _data(method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, _ = SIZES[method]
    if method == "tiny":
        from tests.helpers.runner_tiny import tiny_data

        return tiny_data(n), None
    from dnnbrain_captum import digits_images

    return digits_images(n=n)


def _rerun(out: Path, method: str) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job: the same arithmetic
    try:
        attribution, _ = make(method)
        images, labels = _data(method)
        run_over(attribution, images, targets=labels, out=out, batch_size=SIZES[method][1])
    finally:
        torch.set_num_threads(threads)
    return np.array(read_results(out))


_EXPECTED: dict[str, np.ndarray] = {}


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    def get(method: str) -> np.ndarray:
        if method not in _EXPECTED:
            _EXPECTED[method] = _rerun(tmp_path_factory.mktemp("uninterrupted") / "run", method)
        return _EXPECTED[method]

    return get


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
        with open(data, "r+b") as f:  # 64 bytes of the first rows (the header is 128 bytes)
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


def _killed_then_damaged(method: str, point: str, tmp_path: Path, expected_result: np.ndarray):
    killed = tmp_path / "killed"
    process = _job(killed, method, "--kill-at", point)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    for how in DAMAGES:
        out = tmp_path / how
        shutil.copytree(killed, out)
        _damage(out, how)
        if how == "manifest":
            with pytest.raises(ValueError, match=f"{out / 'manifest.json'} is not valid JSON"):
                _rerun(out, method)
            continue
        assert np.array_equal(_rerun(out, method), expected_result), (point, how)
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]


@pytest.mark.parametrize("point", ["rows:1", "manifest"])
def test_killed_and_damaged_runs_resume_exactly_or_name_the_file(
    point: str, tmp_path: Path, expected
) -> None:  # noqa: ANN001
    """Killed halfway through chunk 1's rows, or after result.npy but before the manifest."""
    _killed_then_damaged("tiny", point, tmp_path, expected("tiny"))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["rows:0", "rows:2", "assemble", "manifest"])
def test_killed_and_damaged_saliency_runs_resume_exactly_or_name_the_file(
    point: str, tmp_path: Path, expected
) -> None:  # noqa: ANN001
    _killed_then_damaged("saliency", point, tmp_path, expected("saliency"))


def _two_together(out: Path, method: str, sleep: str) -> list[tuple[int, str]]:
    gate = out.parent / "gate"
    gate.mkdir()
    processes = [
        _job(out, method, "--sleep", sleep, "--start-together", str(gate)) for _ in range(2)
    ]
    deadline = time.monotonic() + 240
    while len(list(gate.glob("ready-*"))) < 2:  # both imported and waiting
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    (gate / "go").touch()
    return [(p.wait(timeout=300), p.communicate()[1]) for p in processes]


@pytest.mark.parametrize(
    "method, sleep", [("tiny", "0.2"), pytest.param("saliency", "1", marks=pytest.mark.slow)]
)
def test_two_runs_started_together_give_one_result(
    method: str, sleep: str, tmp_path: Path, expected
) -> None:  # noqa: ANN001
    """Both call run_over at the same moment (a gate file); each chunk takes ``sleep`` s."""
    out = tmp_path / "shared"
    outcomes = _two_together(out, method, sleep)
    assert any(code == 0 for code, _ in outcomes), outcomes
    for code, stderr in outcomes:
        assert code == 0 or f"output folder {out} is in use by another run: process" in stderr
    assert np.array_equal(np.array(read_results(out)), expected(method))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "result.npy"]
