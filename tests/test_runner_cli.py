"""The command line's streamed runs (through run_over) and the files they must never lose
(issue 12): an unreadable image refuses the run before anything is written, in every streamed
subcommand and in ``atlas`` (which streams through run_over too); staging folders left by a
killed command are removed only when provably ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnnbrain_captum import cli, digits_images
from dnnbrain_captum.runner import _lock
from tests.helpers.bad_images import UNREADABLE

ROOT = Path(__file__).resolve().parents[1]
# the streamed subcommands, with the options each needs besides the images
STREAMED = {
    "saliency": [],
    "occlusion": ["--window", "8", "--stride", "8"],
    "upsample": ["--layer", "conv3", "--channel", "0"],
    "atlas": ["--layer", "conv3", "--channels", "0-1", "--top-k", "1"],  # run_over inside
}


def run(args: list) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {
        p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    digits, _ = digits_images(n=2)
    for k in range(2):
        array = (digits[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"a{k}.png")
    return folder


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
@pytest.mark.parametrize("command", sorted(STREAMED))
def test_streamed_unreadable_image_is_one_line_exit_2_and_nothing_written(
    command: str, kind: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    work = tmp_path / "work"
    folder = work / "images"
    folder.mkdir(parents=True)
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    UNREADABLE[kind](folder / "a1_bad.png")  # between the good ones: the run would reach it
    (folder / "z_bad.png").write_bytes(b"also not an image")
    before = tree(work)
    out = work / "out"
    code = run([command, folder, *STREAMED[command], "--batch-size", 1, "--out", out])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert f"dnnbrain-captum {command}: error: cannot read image" in lines[0]
    assert "a1_bad.png" in lines[0] and "(and 1 more unreadable)" in lines[0]
    assert "nothing was written" in lines[0]
    assert ("--skip-unreadable" in lines[0]) == (command != "atlas")  # atlas has no such option
    assert "Traceback" not in captured.err
    assert tree(work) == before  # no out folder, no run, no figure


def test_streamed_unreadable_image_leaves_an_earlier_run_byte_for_byte(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A rerun into a finished (resumable) run folder, now with a bad image among the inputs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    args = ["upsample", folder, *STREAMED["upsample"], "--out", out, "--quiet"]
    assert run(args) == 0
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    UNREADABLE["truncated"](folder / "a0.png")
    for extra in ([], ["--overwrite"]):
        assert run([*args, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "a0.png" in lines[0], lines
        assert tree(out) == before


# ----------------------------------------------------------------------------- staging leftovers


def test_staging_left_by_a_killed_command_is_removed_only_when_recorded(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while it holds the lock and a staging folder: the next lock
    holder removes that staging folder (its name is in the dead holder's lock file) and
    nothing else, not even a folder with the same prefix that the lock file does not name."""
    out = tmp_path / "out"
    out.mkdir()
    user = out / f"{_lock.STAGING_PREFIX}mine"  # the user's own, named like ours
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    (out / "data.csv").write_text("1,2\n")
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dnnbrain_captum.runner import _lock\n"
        "out = Path(sys.argv[1])\n"
        "_lock.acquire(out)\n"
        "staging = _lock.staging_folder(out)\n"
        "(staging / 'fig.png').write_bytes(b'half')\n"
        "print(staging.name, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = out / done.stdout.strip()
    assert left.is_dir() and left.name.startswith(_lock.STAGING_PREFIX)
    holder = json.loads((out / _lock.LOCK).read_text())
    assert holder["staging"] == [left.name]
    before_user = tree(user)
    with _lock.locked(out):
        assert not left.exists()  # the dead holder's staging: removed
        assert tree(user) == before_user  # same prefix, not recorded: kept
    assert sorted(p.name for p in out.iterdir()) == sorted(["data.csv", user.name])
    assert (out / "data.csv").read_text() == "1,2\n"


@pytest.mark.parametrize(
    "recorded",
    [
        "../outside",
        "data.csv",
        f"{_lock.STAGING_PREFIX}link",  # a symbolic link to a folder outside
        f"{_lock.STAGING_PREFIX}x/../../outside",
        f"{_lock.STAGING_PREFIX}file",  # a file, not a folder
        7,
        None,
    ],
)
def test_a_forged_lock_file_removes_nothing(recorded: object, tmp_path: Path) -> None:
    """Only a plain name with our prefix, a real folder directly in ``out``, is removed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "thesis.tex").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("1")
    (out / f"{_lock.STAGING_PREFIX}link").symlink_to(outside)
    (out / f"{_lock.STAGING_PREFIX}file").write_text("2")
    (out / _lock.LOCK).write_text(json.dumps({"pid": 1, "host": "h", "staging": [recorded]}))
    before = tree(tmp_path)
    with _lock.locked(out):
        pass
    del before[f"out/{_lock.LOCK}"]  # the lock file itself goes at the end of the run
    assert tree(tmp_path) == before


def test_without_flock_a_dead_holders_staging_is_removed_a_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback lock (no ``flock``): a lock file whose process is gone on this machine is
    taken over and its staging removed; a live holder's lock refuses the run, staging kept."""
    import socket

    monkeypatch.setattr(_lock, "fcntl", None)
    out = tmp_path / "out"
    out.mkdir()
    staging = out / f"{_lock.STAGING_PREFIX}0123"
    staging.mkdir()
    (staging / "fig.png").write_bytes(b"half")
    holder = {"host": socket.gethostname(), "started": "x", "staging": [staging.name]}
    (out / _lock.LOCK).write_text(json.dumps({**holder, "pid": os.getpid()}))  # alive
    with pytest.raises(_lock.FolderBusyError), _lock.locked(out):
        pass
    assert (staging / "fig.png").read_bytes() == b"half"
    (out / _lock.LOCK).write_text(json.dumps({**holder, "pid": 2**22 + 12345}))  # gone
    with _lock.locked(out):
        assert not staging.exists()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_the_next_command_removes_a_dead_commands_staging(
    streamed: bool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """End to end: a folder as a killed command left it (its lock file naming its staging
    folder); the next command there removes that folder, keeps the user's look-alike."""
    out = tmp_path / "out"
    out.mkdir()
    left = out / f"{_lock.STAGING_PREFIX}deadbeef"
    left.mkdir()
    (left / "000_digit0_label7_saliency.png").write_bytes(b"half")
    mine = out / f"{_lock.STAGING_PREFIX}mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    dead = {"pid": 2**22 + 12345, "host": "gone", "started": "x", "staging": [left.name]}
    (out / _lock.LOCK).write_text(json.dumps(dead))
    mode = ["--stream", "--layer", "conv5", "--channel", 1] if streamed else []
    assert run(["saliency", "--digits", 1, *mode, "--quiet", "--out", out, "--overwrite"]) == 0
    assert not left.exists() and (mine / "keep.txt").read_text() == "mine"
    assert not (out / _lock.LOCK).exists()
    record = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*record["files"], mine.name])
