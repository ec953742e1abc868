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
    assert names == sorted([*figures, "notes.txt", "results.json", "result.npy"])
    record = json.loads((out / "results.json").read_text())
    assert sorted(record["sha256"]) == sorted([*figures[:2], "result.npy"])
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
        first = np.load(out / "result.npy")
        (target / "mine.txt").write_text("keep")
        assert run(["saliency", "--digits", 3, "--quiet", "--out", out, "--overwrite"]) == 0
        assert np.load(out / "result.npy").shape[0] == 3 and first.shape[0] == 2
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
        if Path(dst).parent == out:  # a publishing move: from the staging folder inside out
            assert Path(src).parent.parent == out
            moves.append(str(dst))
            if len(moves) == 2:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
        return original(src, dst)

    monkeypatch.setattr(os, "replace", crossing)
    assert run(["saliency", "--digits", 3, "--quiet", "--out", out, "--overwrite"]) == 2
    monkeypatch.undo()
    _one_error_line(capsys, "Invalid cross-device link")
    assert {p.name for p in out.iterdir()} == names
    assert len(moves) == 2  # the second publishing move failed


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


# ----------------------------------------------------------------------------- one layout
# Issue 14: the output layout differed between image files (``saliency.npy``, one figure per
# image) and a folder (``result.npy`` + ``manifest.json``, figures for the first 16 only).

LAYOUT_RUNS = {
    "saliency": ["--layer", "conv5", "--channel", 1],
    "occlusion": ["--window", 8, "--stride", 4],
    "upsample": ["--layer", "conv3", "--channel", 2],
}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three held-out digits as PNG files in one folder (sorted as the folder is read)."""
    from PIL import Image

    from dnnbrain_captum.models import digits_images

    folder = tmp_path_factory.mktemp("photos")
    images, _ = digits_images(n=3)
    paths = []
    for k in range(3):
        array = (images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"p{k}.png")
        paths.append(folder / f"p{k}.png")
    return paths


def _layout(out: Path) -> tuple[set[str], dict]:
    record = json.loads((out / "results.json").read_text())
    return {p.name for p in out.iterdir()}, record


@pytest.mark.parametrize("command", sorted(LAYOUT_RUNS))
def test_files_and_a_folder_give_one_layout(tmp_path, photo_files, command) -> None:  # noqa: ANN001
    """The same images given as files (in memory), as their folder (streamed) and as files
    with --stream: the same file names, the same main array ``result.npy`` row for row, the
    same ``images`` list; a streamed run adds only its resume record ``manifest.json`` (and
    ``predicted_classes/`` when the targets are the predicted classes)."""
    args = [command, *LAYOUT_RUNS[command], "--quiet", "--max-figures", 2]
    assert run([*args, *photo_files, "--out", tmp_path / "files"]) == 0
    assert run([*args, photo_files[0].parent, "--out", tmp_path / "folder"]) == 0
    assert run([*args, *photo_files, "--stream", "--out", tmp_path / "streamed"]) == 0
    names, record = _layout(tmp_path / "files")
    figures = {f"00{k}_p{k}_{command}.png" for k in range(2)}
    resume = {"manifest.json"} | ({"predicted_classes"} if command == "occlusion" else set())
    assert names == {"result.npy", "results.json", *figures}
    assert record["result"] == "result.npy" and record["mode"] == "memory"
    expected = np.load(tmp_path / "files" / "result.npy")
    assert expected.shape[0] == 3
    for other in ("folder", "streamed"):
        other_names, other_record = _layout(tmp_path / other)
        assert other_names == names | resume, other
        assert other_record["result"] == "result.npy" and other_record["mode"] == "stream"
        assert other_record["images"] == record["images"]
        np.testing.assert_allclose(
            np.load(tmp_path / other / "result.npy"), expected, rtol=1e-5, atol=1e-6
        )


def test_every_in_memory_subcommand_names_its_main_array_result_npy(tmp_path) -> None:  # noqa: ANN001
    """``result.npy`` (rows named by ``result_rows``) for every subcommand with an array."""
    runs = {
        "mask": ["--digits", 2, "--layer", "conv3", "--channel", 1],
        "synthesize": ["--layer", "conv3", "--channel", "0-1", "--n-iter", 2],
        "empirical-rf": ["--digits", 2, "--layer", "conv3", "--channel", 1],
    }
    rows = {"mask": ("images", 2), "synthesize": ("targets", 2), "empirical-rf": ("field", None)}
    for command, extra in runs.items():
        out = tmp_path / command
        assert run([command, *extra, "--quiet", "--no-figures", "--out", out]) == 0, command
        record = json.loads((out / "results.json").read_text())
        assert record["result"] == "result.npy" and "result.npy" in record["files"], command
        kind, n = rows[command]
        assert record["result_rows"] == kind
        if n is not None:
            assert np.load(out / "result.npy").shape[0] == n, command


def test_max_figures_is_honoured_in_memory_too(tmp_path, capsys) -> None:  # noqa: ANN001
    args = ["upsample", "--digits", 3, "--layer", "conv3", "--channel", 1, "--quiet"]
    assert run([*args, "--max-figures", 1, "--out", tmp_path / "one"]) == 0
    assert len(list((tmp_path / "one").glob("*.png"))) == 1
    assert run([*args, "--max-figures", -1, "--out", tmp_path / "neg"]) == 2
    _one_error_line(capsys, "--max-figures must be >= 0, got -1")
    assert not (tmp_path / "neg").exists()
