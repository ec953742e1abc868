"""The atlas on the runner: a killed atlas resumes to the same folder; torchrun equals one
process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnbrain_captum.atlas import read_atlas
from tests.helpers.atlas_job import tiny_atlas, tiny_images
from tests.test_runner_dist import _env, _free_port

JOB = Path(__file__).parent / "helpers" / "atlas_job.py"


def _job(
    out: Path, images: Path, *extra: str, torchrun: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(JOB), str(out), str(images), *extra]
    if torchrun:
        port = _free_port()
        command[1:1] = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=_env(), cwd=out.parent
    )


def _here(out: Path) -> None:
    """The same atlas in this process, with one thread like the jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny_atlas(str(out), tiny_images())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny atlas built in this process, uninterrupted (the reference of both tests)."""
    out = tmp_path_factory.mktemp("single") / "atlas"
    _here(out)
    return out


@pytest.fixture(scope="module")
def images_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stimuli") / "images.pt"
    torch.save(tiny_images(), path)
    return path


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file's bytes, but the runner manifests (timestamps, ranks) by their request."""
    files = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(out).as_posix()
        if name.startswith("runs/") and path.name == "manifest.json":
            files[name] = repr(json.loads(path.read_text())["request"]).encode()
        else:
            files[name] = path.read_bytes()
    return files


def _same(first: Path, second: Path) -> None:
    a, b = _snapshot(first), _snapshot(second)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, different
    assert any(name.endswith("result.npy") for name in a)


def test_killed_atlas_resumes_to_the_same_atlas(
    tmp_path: Path, single: Path, images_file: Path
) -> None:
    killed = tmp_path / "killed"
    died = _job(killed, images_file, "--kill-in", "occlusion", "--kill-after", "1")
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    assert not (killed / "atlas.json").exists()
    assert (killed / "runs" / "conv3" / "maps" / "result.npy").is_file()  # finished piece
    occlusion = killed / "runs" / "conv3" / "occlusion"
    assert json.loads((occlusion / "manifest.json").read_text())["status"] == "running"
    assert not (occlusion / "result.npy").exists()
    assert len((occlusion / "result.partial.done").read_text().splitlines()) == 1  # one chunk
    _here(killed)
    _same(single, killed)


def test_torchrun_two_processes_equal_one(tmp_path: Path, single: Path, images_file: Path) -> None:
    double = tmp_path / "double"
    done = _job(double, images_file, torchrun=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("DONE rank") == 2
    _same(single, double)
    manifest = (double / "runs" / "conv5" / "syntheses" / "manifest.json").read_text()
    assert '"world_size": 2' in manifest
    atlas = read_atlas(double)
    assert [len(layer["channels"]) for layer in atlas["layers"]] == [3, 3]
    maps = np.load(double / "runs" / "conv5" / "maps" / "result.npy")
    assert maps.shape == (6, 32, 32)
