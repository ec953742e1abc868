"""The command's output folder never loses a user's file (issue 12): ``--overwrite`` removes only
files the command wrote (recorded with their SHA-256 in ``results.json``), a ``results.json`` it
did not write is refused, results are published by renames inside ``--out`` (so a symlink to
another file system works), and a failed publication never leaves less than before."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dnnbrain_captum import cli

IN_MEMORY = ["saliency", "--digits", 2, "--quiet"]
STREAMED = [
    "saliency",
    "--digits",
    2,
    "--stream",
    "--quiet",
    "--layer",
    "conv5",
    "--channel",
    1,
    "--max-figures",
    1,
]


def run(args: Sequence[object]) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for word in words:
        assert word in err[0], err
    return err[0]


@pytest.mark.parametrize("mode", [IN_MEMORY, STREAMED], ids=["in-memory", "streamed"])
def test_foreign_results_json_is_refused_and_its_files_survive(tmp_path, capsys, mode) -> None:  # noqa: ANN001
    """The old code deleted every file a foreign results.json listed (exit 0)."""
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "thesis.tex").write_text("\\chapter{One}\n")
    (tmp_path / "results.json").write_text(json.dumps({"files": ["data.csv", "thesis.tex"]}))
    before = snapshot(tmp_path)
    assert run([*mode, "--out", tmp_path, "--overwrite"]) == 2
    _one_error_line(capsys, "results.json", "did not write", "nothing was changed")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "results.json", "thesis.tex"]


def test_streamed_overwrite_keeps_a_users_chunks_and_result(tmp_path, capsys) -> None:  # noqa: ANN001
    """The old code removed a user's chunks/ folder and result.npy (no run of ours there)."""
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "chunk-000000.npy").write_bytes(b"mine")
    np.save(tmp_path / "result.npy", np.arange(3))
    before = snapshot(tmp_path)
    assert run([*STREAMED, "--out", tmp_path, "--overwrite"]) == 2
    _one_error_line(capsys, "result.npy", "nothing was changed")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks", "result.npy"]


def test_overwrite_replaces_only_unchanged_files_of_ours(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "res"
    args = ["upsample", "--layer", "conv3", "--channel", 1, "--quiet", "--out", out]
    assert run([args[0], "--digits", 3, *args[1:]]) == 0
    figures = sorted(p.name for p in out.glob("*.png"))
    assert len(figures) == 3
    (out / figures[2]).write_bytes(b"edited by the user")  # no longer ours
    (out / "notes.txt").write_text("keep")
    assert run([args[0], "--digits", 2, *args[1:], "--overwrite"]) == 0
    assert (out / figures[2]).read_bytes() == b"edited by the user"
    assert (out / "notes.txt").read_text() == "keep"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*figures, "notes.txt", "results.json", "upsample.npy"])
    record = json.loads((out / "results.json").read_text())
    assert sorted(record["sha256"]) == sorted([*figures[:2], "upsample.npy"])
    # a new result whose name is taken by a file that is not ours: refused, nothing changed
    before = snapshot(out)
    assert run([args[0], "--digits", 3, *args[1:], "--overwrite"]) == 2
    _one_error_line(capsys, figures[2], "did not write", "nothing was changed")
    assert snapshot(out) == before


def _other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` when this machine has one (the
    tmpfs /dev/shm), else beside it (the symlink is then tested within one file system)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and (shm.stat().st_dev != tmp_path.stat().st_dev):
        return Path(tempfile.mkdtemp(dir=shm))
    return Path(tempfile.mkdtemp(dir=tmp_path))


def test_out_symlinked_to_another_file_system(tmp_path) -> None:  # noqa: ANN001
    """The old code deleted the previous results, then failed with 'Invalid cross-device
    link' (an empty folder); a fresh run there was refused."""
    target = _other_file_system(tmp_path)
    try:
        out = tmp_path / "link"
        out.symlink_to(target, target_is_directory=True)
        assert run([*IN_MEMORY, "--no-figures", "--out", out]) == 0  # a fresh run
        first = np.load(out / "saliency.npy")
        (target / "mine.txt").write_text("keep")
        assert run(["saliency", "--digits", 3, "--quiet", "--out", out, "--overwrite"]) == 0
        assert np.load(out / "saliency.npy").shape[0] == 3 and first.shape[0] == 2
        assert (target / "mine.txt").read_text() == "keep"
        assert not [p for p in target.iterdir() if p.name.startswith(".")]
    finally:
        for path in sorted(target.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        target.rmdir()


def test_a_failed_publication_never_leaves_less(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    out = tmp_path / "res"
    assert run([*IN_MEMORY, "--out", out]) == 0
    (out / "mine.txt").write_text("keep")
    names = {p.name for p in out.iterdir()}
    moves: list[str] = []
    original = os.replace

    def crossing(src, dst):  # noqa: ANN001, ANN202
        moves.append(str(dst))
        if len(moves) == 2:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return original(src, dst)

    monkeypatch.setattr(os, "replace", crossing)
    assert run(["saliency", "--digits", 3, "--quiet", "--out", out, "--overwrite"]) == 2
    monkeypatch.undo()
    _one_error_line(capsys, "Invalid cross-device link")
    assert {p.name for p in out.iterdir()} == names
    assert all(Path(m).parent == out for m in moves)  # every move stays inside --out


def test_second_run_on_a_locked_folder_fails_fast(tmp_path, capsys) -> None:  # noqa: ANN001
    from dnnbrain_captum.runner import _lock

    out = tmp_path / "res"
    out.mkdir()
    pid = os.fork()
    if pid == 0:  # a child holding the lock
        _lock.acquire(out)
        time.sleep(30)
        os._exit(0)
    try:
        for _ in range(200):
            if (out / _lock.LOCK).is_file() and (out / _lock.LOCK).read_text():
                break
            time.sleep(0.05)
        assert run([*IN_MEMORY, "--out", out]) == 2
        _one_error_line(capsys, "in use by another run", f"process {pid}")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert run([*IN_MEMORY, "--out", out]) == 0  # the killed holder's lock is taken over
