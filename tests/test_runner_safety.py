"""run_over never destroys or fakes data: the user's files survive byte for byte, damaged results
are recomputed or refused naming the file, malformed manifests are one ValueError naming the
file, and the output folder is locked (issue 12)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnbrain_captum import VanillaSaliencyImage, digits_cnn, digits_images, read_results, run_over
from dnnbrain_captum.runner import read_manifest
from tests.helpers.bad_images import UNREADABLE


@pytest.fixture(scope="module")
def job() -> tuple[VanillaSaliencyImage, torch.Tensor, torch.Tensor]:
    images, labels = digits_images(n=10)
    return VanillaSaliencyImage(digits_cnn(), "conv5"), images, labels


def _run(job, out: Path, **kwargs):  # noqa: ANN001, ANN202
    saliency, images, labels = job
    return run_over(saliency, images, targets=labels, out=out, batch_size=3, **kwargs)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def expected(job, tmp_path_factory) -> np.ndarray:  # noqa: ANN001
    out = tmp_path_factory.mktemp("whole")
    _run(job, out)
    return np.array(read_results(out))


def test_users_chunks_and_result_survive_overwrite(job, tmp_path) -> None:  # noqa: ANN001
    """No run of ours in the folder: its chunks/ and result.npy are the user's, also with
    overwrite=True (the old code deleted them)."""
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "chunk-000000.npy").write_bytes(b"my own chunk")
    (tmp_path / "chunks" / "notes.txt").write_bytes(b"my notes")
    np.save(tmp_path / "result.npy", np.arange(5))
    before = _snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"holds result\.npy, chunks but no manifest\.json"):
            _run(job, tmp_path, overwrite=overwrite)
        assert _snapshot(tmp_path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks", "result.npy"]


def test_user_files_looking_temporary_survive(job, tmp_path, expected) -> None:  # noqa: ANN001
    """The old code deleted every *.tmp-* file of the folder."""
    (tmp_path / "draft.tmp-123").write_bytes(b"draft")
    (tmp_path / "manifest.json.tmp-1").write_bytes(b"mine too")
    _run(job, tmp_path)
    assert (tmp_path / "draft.tmp-123").read_bytes() == b"draft"
    assert (tmp_path / "manifest.json.tmp-1").read_bytes() == b"mine too"
    assert np.array_equal(read_results(tmp_path), expected)


def test_overwrite_removes_only_the_runs_own_files(job, tmp_path, expected) -> None:  # noqa: ANN001
    saliency, images, labels = job
    run_over(saliency, images, targets=labels, out=tmp_path, batch_size=5, assemble=False)
    (tmp_path / "chunks" / "mine.txt").write_bytes(b"keep")
    (tmp_path / "thesis.tex").write_bytes(b"keep too")
    # a forged list of owned files names nothing beyond the run's own names
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"] += ["thesis.tex", "chunks/mine.txt", "../x"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _run(job, tmp_path, overwrite=True)  # a different chunk size: replaces the run
    assert (tmp_path / "chunks" / "mine.txt").read_bytes() == b"keep"
    assert (tmp_path / "thesis.tex").read_bytes() == b"keep too"
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["mine.txt"]
    assert np.array_equal(read_results(tmp_path), expected)


def test_damaged_result_is_named_then_recomputed(job, tmp_path, expected) -> None:  # noqa: ANN001
    """64 flipped bytes used to come back as NaN with no error."""
    _run(job, tmp_path)
    path = tmp_path / "result.npy"
    data = bytearray(path.read_bytes())
    for k in range(64):
        data[-200 + k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"result\.npy does not match the SHA-256 recorded in"):
        read_results(tmp_path)
    assert read_results(tmp_path, verify=False).shape == expected.shape  # the check can be skipped
    summary = _run(job, tmp_path)  # a rerun recomputes it
    assert (summary.reused, summary.computed) == (0, 10)
    assert np.array_equal(read_results(tmp_path), expected)


def test_damaged_kept_chunk_is_recomputed(job, tmp_path, expected) -> None:  # noqa: ANN001
    _run(job, tmp_path, assemble=False)
    chunk = tmp_path / "chunks" / "chunk-000002.npy"
    chunk.write_bytes(chunk.read_bytes()[:-40] + b"\0" * 40)
    with pytest.raises(ValueError, match=r"chunk-000002\.npy does not match its recorded SHA"):
        read_results(tmp_path)
    summary = _run(job, tmp_path, assemble=False)
    assert (summary.reused, summary.computed) == (7, 3)
    assert np.array_equal(read_results(tmp_path), expected)


def test_truncated_partial_and_false_done_line_are_recomputed(
    job,
    tmp_path,
    expected,  # noqa: ANN001
    monkeypatch,
) -> None:
    """The old resume trusted its log: all-zero rows came back as 'reused'."""
    saliency, images, labels = job
    original = VanillaSaliencyImage.attribute
    calls = {"n": 0}

    def crash_third(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VanillaSaliencyImage, "attribute", crash_third)
    with pytest.raises(RuntimeError, match="crash"):
        _run(job, tmp_path)
    monkeypatch.setattr(VanillaSaliencyImage, "attribute", original)
    partial = tmp_path / "result.partial.npy"
    row_bytes = 3 * 32 * 32 * 4
    header = partial.stat().st_size - 10 * row_bytes
    os.truncate(partial, header + 4 * row_bytes + 100)  # chunk 0 kept, chunk 1 cut short
    log = tmp_path / "result.partial.done"
    first = json.loads(log.read_text().splitlines()[0])
    with open(log, "a") as f:  # a done line for chunk 3, never written
        f.write(json.dumps({"chunk": 3, "sha256": first["sha256"], "skipped": []}) + "\n")
        f.write('{"chunk": 2, "sha2')  # a half-written line
    summary = _run(job, tmp_path)
    assert (summary.reused, summary.computed) == (3, 7)
    assert np.array_equal(read_results(tmp_path), expected)


BAD_MANIFESTS = [
    ("[]", "holds a JSON list, not an object"),
    ("null", "holds a JSON NoneType, not an object"),
    ('{"format": "dnnbrain_captum.run"', "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
    ('{"format": "other"}', "'format' is 'other'"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_MANIFESTS)
def test_malformed_manifest_is_one_value_error(job, tmp_path, text, problem) -> None:  # noqa: ANN001
    (tmp_path / "manifest.json").write_bytes(text.encode("latin-1"))
    before = _snapshot(tmp_path)
    path = str(tmp_path / "manifest.json")
    for call in (read_manifest, read_results, lambda out: _run(job, out, overwrite=True)):
        with pytest.raises(ValueError) as info:
            call(tmp_path)
        assert path in str(info.value) and problem in str(info.value)
    assert _snapshot(tmp_path) == before


def test_manifest_missing_keys_and_damaged_header(job, tmp_path) -> None:  # noqa: ANN001
    _run(job, tmp_path)
    good = json.loads((tmp_path / "manifest.json").read_text())
    for key, problem in (
        ("request", "'request' is not an object"),
        ("status", "'status' is None"),
        ("shape", "'shape' is not a list"),
        ("result_sha256", "'result_sha256' is missing"),
    ):
        broken = {k: v for k, v in good.items() if k != key}
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(
            ValueError, match=f"manifest.json is not a valid run manifest: {problem}"
        ):
            read_results(tmp_path)
    inner = {**good, "request": {k: v for k, v in good["request"].items() if k != "n_items"}}
    (tmp_path / "manifest.json").write_text(json.dumps(inner))
    with pytest.raises(ValueError, match="'request' lacks the key 'n_items'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    result = tmp_path / "result.npy"
    result.write_bytes(b"\x93NUMPY\x01\x00garbage" + result.read_bytes()[18:])
    with pytest.raises(ValueError, match=r"result\.npy has a damaged \.npy header"):
        read_results(tmp_path, verify=False)


def test_lock_names_its_holder_and_a_stale_lock_is_taken_over(
    job,
    tmp_path,
    expected,  # noqa: ANN001
    monkeypatch,
) -> None:
    import fcntl
    import socket

    from dnnbrain_captum.runner import FolderBusyError, _lock

    lock = tmp_path / ".dnnbrain-run.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)  # another open file: a second holder
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "then"}))
    fcntl.flock(holder, fcntl.LOCK_EX)
    with pytest.raises(
        FolderBusyError,
        match=r"in use by another run: process 4242 on "
        r"elsewhere \(since then\)",
    ):
        _run(job, tmp_path)
    os.close(holder)  # the holder died: the kernel dropped its lock
    _run(job, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "result.npy"]
    # without flock: a lock file whose process is gone on this machine is taken over
    monkeypatch.setattr(_lock, "fcntl", None)
    out = tmp_path / "fallback"
    out.mkdir()
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "x"}
    (out / ".dnnbrain-run.lock").write_text(json.dumps(dead))
    _run(job, out)
    assert np.array_equal(read_results(out), expected)
    alive = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
    (out / ".dnnbrain-run.lock").write_text(json.dumps(alive))
    with pytest.raises(FolderBusyError, match=f"process {os.getpid()}"):
        _run(job, out)


def test_a_lock_taken_a_moment_ago_still_names_its_holder(tmp_path: Path) -> None:
    """The holder writes who it is just after taking the lock: a run that meets the lock in
    between waits for those bytes instead of naming "another process" (seen in CI: two runs
    started together)."""
    import threading

    from dnnbrain_captum.runner import _lock

    lock = tmp_path / ".dnnbrain-run.lock"
    lock.touch()  # taken, not yet written
    info = json.dumps({"pid": 4242, "host": "elsewhere", "started": "now"})
    writer = threading.Timer(0.15, lock.write_text, args=(info,))
    writer.start()
    try:
        message = str(_lock._busy(tmp_path, lock))
    finally:
        writer.join()
    assert "in use by another run: process 4242 on elsewhere (since now)" in message


def _other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` when this machine has one (the tmpfs
    /dev/shm), else beside it (the symlink is then tested within one file system)."""
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return Path(tempfile.mkdtemp(dir=shm))
    return Path(tempfile.mkdtemp(dir=tmp_path))


def test_out_symlinked_to_another_file_system(job, tmp_path, expected) -> None:  # noqa: ANN001
    """Every file is staged inside ``out`` and renamed there: a link to another file system
    works, a rerun with overwrite=True replaces the run, and the user's file there survives."""
    import shutil

    target = _other_file_system(tmp_path)
    try:
        (target / "notes.txt").write_bytes(b"mine")
        link = tmp_path / "out"
        link.symlink_to(target, target_is_directory=True)
        _run(job, link)
        assert np.array_equal(read_results(link), expected)
        saliency, images, labels = job
        run_over(saliency, images, targets=labels, out=link, batch_size=5, overwrite=True)
        assert read_manifest(link)["request"]["chunk_size"] == 5  # replaced
        np.testing.assert_allclose(read_results(link), expected, rtol=1e-5, atol=1e-6)
        assert sorted(p.name for p in target.iterdir()) == [
            "manifest.json",
            "notes.txt",
            "result.npy",
        ]
        assert (target / "notes.txt").read_bytes() == b"mine"
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_image_is_one_error_naming_it_and_the_images_survive(
    kind: str, tmp_path: Path
) -> None:
    """A bad header, a decompression bomb or a truncated file among the images: one
    ItemLoadError (a ValueError, one line) naming the file; on_error="skip" skips it."""
    from PIL import Image

    from dnnbrain_captum.io import ImageFolderDataset
    from dnnbrain_captum.runner import ItemLoadError
    from tests.helpers.runner_tiny import TinyAttribution

    folder = tmp_path / "images"
    folder.mkdir()
    for k in (0, 2):
        Image.new("RGB", (4, 4), (60 * k, 0, 0)).save(folder / f"img{k}.png")
    UNREADABLE[kind](folder / "img1.png")
    before = _snapshot(folder)
    data = ImageFolderDataset(folder, transform=lambda x: x[:, :4, :4])
    with pytest.raises(ItemLoadError) as info:
        run_over(TinyAttribution(), data, out=tmp_path / "out", batch_size=2)
    message = str(info.value)
    assert "\n" not in message and "item 1 (img1.png)" in message
    assert f"cannot read image {folder / 'img1.png'}" in message
    if kind == "decompression bomb":
        assert "decompression bomb" in message
    summary = run_over(TinyAttribution(), data, out=tmp_path / "out", batch_size=2, on_error="skip")
    assert [s["id"] for s in summary.skipped] == ["img1.png"]
    assert np.isnan(read_results(tmp_path / "out")[1]).all()
    assert _snapshot(folder) == before
