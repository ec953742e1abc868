"""The output folder of ``dnnbrain-captum``: ``--out``, ``--overwrite``, ``results.json`` and the
atomic publication of the results.

What the command owns in ``--out`` is what its ``results.json`` lists *with the SHA-256 of the
bytes it wrote* (``"sha256": {name: digest}``, beside ``"format": "dnnbrain_captum.cli"``); a
file counts as ours only while its bytes still match. ``--overwrite`` replaces and removes only
such files; anything else is left untouched, and a new result whose name is taken by a file we
do not own is refused (one line, exit 2, nothing changed), as is a ``results.json`` that we did
not write. Results are written into a private folder created *inside* ``--out`` (so on the same
file system, also when ``--out`` is a symbolic link to another one) and renamed into place one by
one, ``results.json`` last; old files of ours are removed only after that. The folder is locked
for the run (:mod:`dnnbrain_captum.runner._lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dnnbrain_captum.cli._common import PROG, CLIError, _one_line
from dnnbrain_captum.runner import _lock
from dnnbrain_captum.runner._storage import sha256_file

MANIFEST = "results.json"
RESULTS_FORMAT = "dnnbrain_captum.cli"
_TMP_PREFIX = _lock.STAGING_PREFIX


def _ours_by_name(name: str) -> bool:
    """Transient entries of a run (a staging folder left by a killed run, the lock)."""
    return name.startswith(_TMP_PREFIX) or name in (_lock.LOCK, ".dnnbrain-run.tmp")


def _occupied(out: Path) -> bool:
    return out.is_dir() and any(not _ours_by_name(e.name) for e in out.iterdir())


def _plain(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
    )


def previous_files(out: Path) -> set[str]:
    """Files in ``out`` that an earlier run wrote and that are unchanged (``results.json``
    included); empty when there is no ``results.json``.

    Raises
    ------
    CLIError
        ``out`` holds a ``results.json`` this command did not write.
    """
    path = out / MANIFEST
    if not (path.exists() or path.is_symlink()):
        return set()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        record = None
    hashes = record.get("sha256") if isinstance(record, dict) else None
    if record is None or record.get("format") != RESULTS_FORMAT or not isinstance(hashes, dict):
        raise CLIError(
            f"--out {out} holds a {MANIFEST} that {PROG} did not write; nothing was changed: "
            "choose another folder, or move it away"
        )
    owned = {MANIFEST}
    for name, digest in hashes.items():
        target = out / str(name)
        if (
            _plain(name)
            and target.is_file()
            and not target.is_symlink()
            and (sha256_file(target) == digest)
        ):
            owned.add(name)
    return owned


def write_results_json(folder: Path, record: dict[str, Any]) -> None:
    """``folder/results.json``: ``record`` with the format and the SHA-256 of each file of
    ``record["files"]`` present in ``folder`` (what a later ``--overwrite`` may replace)."""
    hashes = {
        name: sha256_file(folder / name)
        for name in record.get("files", [])
        if name != MANIFEST and _plain(name) and (folder / name).is_file()
    }
    data = {"format": RESULTS_FORMAT, **record, "sha256": hashes}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def publish(staging: Path, out: Path, previous: set[str]) -> None:
    """Move the files of ``staging`` (inside ``out``) into ``out``, ``results.json`` last, then
    remove the files of ``previous`` that were not replaced. A name taken by a file we do not
    own is refused before anything moves."""
    names = sorted((p.name for p in staging.iterdir()), key=lambda n: n == MANIFEST)
    for name in names:
        target = out / name
        if (target.exists() or target.is_symlink()) and name not in previous:
            raise CLIError(
                f"--out {out} already holds {name}, which {PROG} did not write (or which was "
                "changed since); nothing was changed: choose another folder, or move it away"
            )
    try:
        for name in names:
            os.replace(staging / name, out / name)  # a rename within out's file system
        for name in sorted(previous - set(names)):
            (out / name).unlink(missing_ok=True)
    except OSError as err:
        raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None


@contextlib.contextmanager
def _locked_out(out: Path) -> Iterator[bool]:
    """Create ``out`` if needed and lock it; yields whether it was created (and is removed
    again if it is still empty at the end)."""
    created = not out.exists()
    try:
        _lock.acquire(out)
    except _lock.FolderBusyError as err:
        raise CLIError(_one_line(err)) from None
    except OSError as err:
        raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None
    try:
        yield created
    finally:
        _lock.release(out)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: the run failed before publishing


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file as ``--out``, and an occupied ``--out`` without ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    if _occupied(out) and not overwrite:
        raise CLIError(
            f"--out {out} already holds results; pass --overwrite to replace them or choose "
            "another folder"
        )


@contextlib.contextmanager
def _staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """Lock ``out`` and yield a private folder inside it; publish its files on success.

    On any exception the private folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    check_out(out, overwrite)
    with _locked_out(out):
        previous = previous_files(out) if overwrite else set()
        try:
            staging = _lock.staging_folder(out)  # named in the lock file first
        except OSError as err:
            raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None
        try:
            yield staging
            publish(staging, out, previous)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
