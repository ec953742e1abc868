"""The atlas folder: which files it owns, atomic writes into it, and the ranks of a torchrun job.

Every file the atlas writes is first named in ``atlas-files.txt`` (one relative path a line),
then written to a temporary name beside its destination and renamed over it. A file that
exists but is not named there belongs to the user and is never replaced or removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["LEDGER", "MANIFEST", "AtlasFolder", "Ranks"]

MANIFEST = "atlas-manifest.json"
LEDGER = "atlas-files.txt"
FORMAT = "dnnbrain_captum.atlas"
RUNS = "runs"


class AtlasFolder:
    """An atlas output folder: checked, claimed and written only through this object.

    Parameters
    ----------
    out : Path
        The folder.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.owned: set[str] = set()
        ledger = self.out / LEDGER
        if ledger.is_file():
            self.owned = {line for line in ledger.read_text("utf-8").splitlines() if line}

    def prepare(self, request: dict[str, Any], overwrite: bool) -> None:
        """Claim the folder for ``request`` (rank 0 only).

        An empty or missing folder is claimed; a folder holding the same atlas request is
        resumed; a different atlas is refused unless ``overwrite`` (then the atlas's own files
        are removed); a folder holding anything else is refused.

        Raises
        ------
        ValueError
            Naming the folder and why it cannot be used.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"atlas folder {out} is a file, not a folder")
        manifest = out / MANIFEST
        if manifest.is_file():
            try:
                previous = json.loads(manifest.read_text("utf-8"))
            except ValueError:
                raise ValueError(
                    f"{manifest} is not valid JSON; remove the folder or choose another one"
                ) from None
            if previous.get("format") != FORMAT:
                raise ValueError(f"{manifest} is not an atlas manifest; choose another folder")
            if previous.get("request") == request:
                return
            if not overwrite:
                changed = sorted(
                    k
                    for k in set(request) | set(previous.get("request", {}))
                    if request.get(k) != previous.get("request", {}).get(k)
                )
                raise ValueError(
                    f"atlas folder {out} holds an atlas built with different settings "
                    f"({', '.join(changed)}); pass overwrite=True (--overwrite) to replace it "
                    "or choose another folder"
                )
            self._remove_own()
        elif out.is_dir() and any(out.iterdir()):
            raise ValueError(
                f"atlas folder {out} already holds files that are not an atlas; "
                "choose an empty or new folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        self.write_json(MANIFEST, {"format": FORMAT, "format_version": 1, "request": request})

    def _remove_own(self) -> None:
        """Remove every file of the ledger, the run folders, and folders left empty."""
        for name in sorted(self.owned, reverse=True):
            path = self.out / name
            if name.startswith(RUNS + "/") and path.is_dir():
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
            with contextlib.suppress(OSError):  # only empty folders go
                parent = path.parent
                while parent != self.out:
                    parent.rmdir()
                    parent = parent.parent
        (self.out / LEDGER).unlink(missing_ok=True)
        self.owned = set()

    def claim(self, name: str) -> Path:
        """Record ``name`` (relative, '/'-separated) as the atlas's before it is written."""
        self.claim_all([name])
        return self.out / name

    def claim_all(self, names: Sequence[str]) -> None:
        """Record several names at once (one append to the ledger), before any is written."""
        new = [name for name in dict.fromkeys(names) if name not in self.owned]
        for name in new:
            path = self.out / name
            if path.exists() and name != MANIFEST:
                raise ValueError(
                    f"{path} exists and was not written by this atlas; it is left "
                    "alone: move it away or choose another folder"
                )
        if not new:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LEDGER, "a", encoding="utf-8") as ledger:
            ledger.write("".join(name + "\n" for name in new))
        self.owned.update(new)

    def write_all(self, files: Mapping[str, bytes]) -> None:
        """Write several files, each atomically, all recorded in the ledger first."""
        self.claim_all(list(files))
        for name, data in files.items():
            self.write_bytes(name, data)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` atomically (temporary file, then rename)."""
        path = self.claim(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def write_text(self, name: str, text: str) -> None:
        """Write UTF-8 ``text`` to ``name`` atomically."""
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, data: Any) -> None:
        """Write ``data`` as indented JSON (no NaN) to ``name`` atomically."""
        self.write_text(name, json.dumps(data, indent=1, allow_nan=False) + "\n")

    def run_folder(self, name: str, writer: bool = True) -> Path:
        """A runner folder ``runs/<name>`` of the atlas (claimed as a whole by the writer, the
        rank that keeps the ledger)."""
        return self.claim(f"{RUNS}/{name}") if writer else self.out / RUNS / name

    def seal(self) -> None:
        """Rewrite the ledger sorted (the same bytes however the work was interrupted)."""
        text = "".join(name + "\n" for name in sorted(self.owned))
        tmp = self.out / f".{LEDGER}.tmp-{os.getpid()}"
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.out / LEDGER)


class Ranks:
    """This process's rank in a torchrun job (or rank 0 of 1), with a CPU group for talking.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) a gloo process group is created for the
    atlas's lifetime unless one exists already; :func:`dnnbrain_captum.run_over` uses it.
    """

    def __init__(self) -> None:
        self.rank, self.world, self.created, self.group = 0, 1, False, None
        dist = torch.distributed
        if not dist.is_available():
            return
        if not dist.is_initialized():
            if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return
            dist.init_process_group(backend="gloo")
            self.created = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > 1 and dist.get_backend() != "gloo":  # objects travel over the CPU
            self.group = dist.new_group(backend="gloo")

    def agree(self, error: BaseException | None) -> None:
        """Collective: raise on every rank if rank 0 failed (``error`` is rank 0's)."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        if error is not None:
            raise error
        if box[0] is not None:
            raise RuntimeError(f"rank 0 failed: {box[0]}")

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @contextlib.contextmanager
    def session(self) -> Iterator[Ranks]:
        """``with Ranks().session() as ranks:`` closes the group at the end."""
        try:
            yield self
        finally:
            self.close()
