"""An exclusive lock on an output folder for the duration of a run.

The lock is ``DIR/.dnnbrain-run.lock``, held with ``flock`` (released by the kernel when the
holding process ends, however it ends: a killed run leaves no live lock, and the next run takes
the file over). Where ``flock`` is unavailable (no ``fcntl``, or a file system without locks) the
file is created exclusively instead, and a lock whose holder is a process of this machine that no
longer runs is taken over. The file holds its holder (process id, host, start time) as JSON, so a
refused run can name it. A second run of the folder fails fast; one process may take the lock
again (the command line holds it around its own ``run_over`` calls).

Staging folders (:func:`staging_folder`, the command line's private folders inside ``DIR``)
are named ``.dnnbrain-captum-tmp-<random>`` and their names are written into the lock file
*before* they are created. A run killed while holding one leaves its lock file behind; the next
holder of the lock reads the dead holder's list and removes exactly those folders (plain names
with that prefix, real folders directly in ``DIR``). Nothing is ever removed by a name pattern:
a folder named like ours that no lock file lists is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".dnnbrain-run.lock"
STAGING_PREFIX = ".dnnbrain-captum-tmp-"
logger = logging.getLogger("dnnbrain_captum.runner")
_HELD: dict[str, list[Any]] = {}  # resolved folder -> [fd, count, holder info] of this process


class FolderBusyError(RuntimeError):
    """The output folder is locked by another run; the message names the holder."""


HOLDER_WAIT = 1.0  # seconds to wait for a new holder to write who it is


def _holder_text(path: Path, wait: float = HOLDER_WAIT) -> str:
    """Who holds the lock file ``path``: its process, host and start time.

    A holder writes these just after taking the lock; a lock met in between is read again
    for up to ``wait`` seconds before the holder is called "another process".
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"process {info['pid']} on {info['host']} (since {info['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another process"
            time.sleep(0.02)


def _busy(folder: Path, path: Path) -> FolderBusyError:
    return FolderBusyError(
        f"output folder {folder} is in use by another run: {_holder_text(path)} holds "
        f"{path}; wait for it to finish, or choose another folder"
    )


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv[:3]),
        "staging": [],
    }


def _write_holder(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0) if hasattr(os, "pwrite") else os.write(fd, data)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _remove_dead_staging(folder: Path, dead: dict[str, Any] | None) -> None:
    """Remove the staging folders that a dead holder's lock file lists (see the module)."""
    names = dead.get("staging") if dead is not None else None
    for name in names if isinstance(names, list) else []:
        if (
            not isinstance(name, str)
            or not name.startswith(STAGING_PREFIX)
            or any(c in name for c in "/\\\0")
        ):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            logger.info("removing %s, left by a killed run", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(path: Path) -> bool:
    """Whether the holder recorded in ``path`` may still run (False only when sure it does not)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info["host"] != socket.gethostname():
            return True
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return True


def _flock(folder: Path, path: Path) -> int | None:
    """The locked descriptor; None when this file system has no ``flock``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        try:  # the previous holder may have removed the file while we waited for it
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _exclusive_file(folder: Path, path: Path) -> tuple[int, dict[str, Any] | None]:
    """The descriptor of the exclusively created lock file, and the stale holder it replaced."""
    dead = None
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), dead
        except FileExistsError:
            if _alive(path):
                raise _busy(folder, path) from None
            logger.warning("taking over the stale lock %s of %s", path, _holder_text(path))
            dead = _read_holder(path)
            path.unlink(missing_ok=True)
    raise _busy(folder, path)


def acquire(folder: Path) -> None:
    """Lock ``folder`` (created if needed) for this process; staging folders a killed holder
    left are removed (see the module).

    Raises
    ------
    FolderBusyError
        Another run holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    path = folder / LOCK
    fd = _flock(folder, path) if fcntl is not None else None
    dead = None
    if fd is None:
        fd, dead = _exclusive_file(folder, path)
    elif os.fstat(fd).st_size:
        logger.info(
            "took over the lock %s left by %s (no longer running)", path, _holder_text(path)
        )
        dead = _read_holder(path)
    info = _holder()
    _write_holder(fd, info)
    _HELD[key] = [fd, 1, info]
    _remove_dead_staging(folder, dead)


def staging_folder(folder: Path) -> Path:
    """A new private folder inside ``folder`` (whose lock this process holds), its name
    recorded in the lock file before it is created.

    Raises
    ------
    RuntimeError
        This process does not hold the lock of ``folder``.
    """
    entry = _HELD.get(str(folder.resolve()))
    if entry is None:
        raise RuntimeError(f"staging_folder needs the lock of {folder}")
    name = STAGING_PREFIX + secrets.token_hex(8)
    entry[2]["staging"].append(name)
    _write_holder(entry[0], entry[2])
    path = folder / name
    path.mkdir()
    return path


def release(folder: Path) -> None:
    """Undo one :func:`acquire`; the last one removes the lock file and unlocks."""
    key = str(folder.resolve())
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        (folder / LOCK).unlink()  # while still locked: a waiter then sees a new file
    os.close(entry[0])


@contextlib.contextmanager
def locked(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of ``folder`` for the ``with`` block (see :func:`acquire`)."""
    path = Path(folder)
    acquire(path)
    try:
        yield
    finally:
        release(path)
