"""An exclusive lock on an output folder for the duration of a run.

The lock is ``DIR/.dnnbrain-run.lock``, held with ``flock`` (released by the kernel when the
holding process ends, however it ends: a killed run leaves no live lock, and the next run takes
the file over). Where ``flock`` is unavailable (no ``fcntl``, or a file system without locks) the
file is created exclusively instead, and a lock whose holder is a process of this machine that no
longer runs is taken over. The file holds its holder (process id, host, start time) as JSON, so a
refused run can name it. A second run of the folder fails fast; one process may take the lock
again (the command line holds it around its own ``run_over`` calls).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".dnnbrain-run.lock"
logger = logging.getLogger("dnnbrain_captum.runner")
_HELD: dict[str, list[Any]] = {}  # resolved folder -> [fd, count] held by this process


class FolderBusyError(RuntimeError):
    """The output folder is locked by another run; the message names the holder."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _busy(folder: Path, path: Path) -> FolderBusyError:
    return FolderBusyError(
        f"output folder {folder} is in use by another run: {_holder_text(path)} holds "
        f"{path}; wait for it to finish, or choose another folder"
    )


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv[:3]),
    }
    data = json.dumps(info).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0) if hasattr(os, "pwrite") else os.write(fd, data)


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


def _exclusive_file(folder: Path, path: Path) -> int:
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _alive(path):
                raise _busy(folder, path) from None
            logger.warning("taking over the stale lock %s of %s", path, _holder_text(path))
            path.unlink(missing_ok=True)
    raise _busy(folder, path)


def acquire(folder: Path) -> None:
    """Lock ``folder`` (created if needed) for this process.

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
    if fd is None:
        fd = _exclusive_file(folder, path)
    elif os.fstat(fd).st_size:
        logger.info(
            "took over the lock %s left by %s (no longer running)", path, _holder_text(path)
        )
    _write_holder(fd)
    _HELD[key] = [fd, 1]


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
