"""The output folder of an in-memory ``dnnbrain-captum`` run: ``--out``, ``--overwrite``,
``results.json`` and the staged publication of the results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dnnbrain_captum.cli._common import CLIError, _one_line

MANIFEST = "results.json"
_TMP_PREFIX = ".dnnbrain-captum-tmp-"


def _occupied(out: Path) -> bool:
    return out.is_dir() and any(out.iterdir())


@contextlib.contextmanager
def _staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; move its files into ``out`` on success.

    On any exception the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    if _occupied(out) and not overwrite:
        raise CLIError(
            f"--out {out} already holds results; pass --overwrite to replace them or choose "
            "another folder"
        )
    base = out.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise CLIError(f"output folder {out} is not writable: {base} is not a folder")
    try:
        staging = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=base))
    except OSError as err:
        raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None
    try:
        yield staging
        _commit(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, out: Path) -> None:
    try:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(out)
            return
        previous = out / MANIFEST
        if previous.is_file():
            try:
                listed = json.loads(previous.read_text(encoding="utf-8")).get("files", [])
            except (ValueError, AttributeError):
                listed = []
            for name in listed:
                target = out / str(name)
                if target.is_file() and target.parent == out:
                    target.unlink()
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as err:
        raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None
