"""``manifest.json``: its schema (every malformed manifest is one ``ValueError`` naming the file
and the problem), the files a run owns, and the check of a folder before a run."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dnnbrain_captum.runner._storage import (
    CHUNKS,
    DONE_LOG,
    MANIFEST,
    PARTIAL,
    RESULT,
    TMP,
    dump_json,
    remove_chunk_files,
    sha256_file,
)

FORMAT = "dnnbrain_captum.run"
FORMAT_VERSION = 2
# every name a run may create; a manifest's "files" is checked against it, so a forged
# manifest cannot name anything else for removal
OWNED = [MANIFEST, RESULT, PARTIAL, DONE_LOG, CHUNKS + "/", TMP + "/"]
logger = logging.getLogger("dnnbrain_captum.runner")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _request_problem(request: Any) -> str | None:
    if not isinstance(request, dict):
        return "'request' is not an object"
    checks = {
        "attribution": lambda v: isinstance(v, dict) and isinstance(v.get("class"), str),
        "parameters": lambda v: isinstance(v, dict),
        "n_items": lambda v: _is_int(v, 1),
        "chunk_size": lambda v: _is_int(v, 1),
        "seed": lambda v: v is None or _is_int(v, -(2**63)),
        "stimulus_ids": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "targets": lambda v: (
            isinstance(v, dict) and v.get("kind") in ("none", "single", "per_item")
        ),
    }
    for key, check in checks.items():
        if key not in request:
            return f"'request' lacks the key {key!r}"
        if not check(request[key]):
            return f"'request.{key}' has an invalid value {str(request[key])[:60]!r}"
    if len(request["stimulus_ids"]) != request["n_items"]:
        return "'request.stimulus_ids' does not have n_items entries"
    return None


def _complete_problem(manifest: dict[str, Any]) -> str | None:
    n_chunks = math.ceil(manifest["request"]["n_items"] / manifest["request"]["chunk_size"])
    shape = manifest.get("shape")
    if not (
        isinstance(shape, list)
        and shape
        and all(_is_int(s) for s in shape)
        and shape[0] == manifest["request"]["n_items"]
    ):
        return "'shape' is not a list of sizes starting with n_items"
    if manifest.get("result") not in (RESULT, None):
        return f"'result' must be {RESULT!r} or null"
    if not isinstance(manifest.get("dtype"), str):
        return "'dtype' is missing"
    chunks = manifest.get("chunks")
    if not (
        isinstance(chunks, list)
        and len(chunks) == n_chunks
        and all(isinstance(c, dict) and "file" in c for c in chunks)
    ):
        return f"'chunks' is not a list of {n_chunks} chunk records"
    if not isinstance(manifest.get("skipped"), list):
        return "'skipped' is not a list"
    if (
        manifest["format_version"] >= 2
        and manifest["result"] is not None
        and not (
            isinstance(manifest.get("result_sha256"), str) and len(manifest["result_sha256"]) == 64
        )
    ):
        return "'result_sha256' is missing"
    return None


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format") != FORMAT:
        return f"'format' is {manifest.get('format')!r}, not {FORMAT!r}"
    if manifest.get("format_version") not in (1, FORMAT_VERSION):
        return f"unknown 'format_version' {manifest.get('format_version')!r}"
    if manifest.get("status") not in ("running", "complete"):
        return f"'status' is {manifest.get('status')!r}, not 'running' or 'complete'"
    problem = _request_problem(manifest.get("request"))
    if problem is None and manifest["status"] == "complete":
        problem = _complete_problem(manifest)
    return problem


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a run folder as a dict (see :mod:`dnnbrain_captum.runner` for its keys).

    Raises
    ------
    FileNotFoundError
        ``out`` holds no ``manifest.json``.
    ValueError
        The manifest is not valid JSON or not a valid run manifest (the message names the file
        and the problem).
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no run manifest ({MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{path} is not a valid run manifest: {problem}")
    return manifest


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two requests."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key in ("attribution", "parameters"):
            diffs += differences(a, b, prefix + key + ".")
        else:
            diffs.append(prefix + key)
    return diffs


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def remove_owned(out: Path, manifest: dict[str, Any]) -> None:
    """Remove exactly the files the run of ``manifest`` owns (its manifest last): the names it
    lists among :data:`OWNED`, and in ``chunks/`` the chunk files of its chunk count; a folder
    is removed only when that leaves it empty."""
    listed = set(manifest.get("files", OWNED)) & set(OWNED)
    request = manifest["request"]
    n_chunks = math.ceil(request["n_items"] / request["chunk_size"])
    if CHUNKS + "/" in listed and (out / CHUNKS).is_dir():
        remove_chunk_files(out, n_chunks)
    if TMP + "/" in listed:
        shutil.rmtree(out / TMP, ignore_errors=True)  # the run's private folder
    for name in (RESULT, PARTIAL, DONE_LOG, MANIFEST):
        if name in listed:
            (out / name).unlink(missing_ok=True)


def _foreign(out: Path) -> list[str]:
    return [name for name in (RESULT, PARTIAL, DONE_LOG, CHUNKS, TMP) if (out / name).exists()]


def check_folder(out: Path, request: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Rank 0, ``out`` locked: refuse what is not ours, replace a different run of ours when
    ``overwrite``, start a new manifest. Returns the manifest of the same run if there is one."""
    path = out / MANIFEST
    if not path.exists():
        clash = _foreign(out)
        if clash:
            raise ValueError(
                f"{out} holds {', '.join(clash)} but no {MANIFEST}: files no run of "
                "run_over wrote; nothing was changed. Choose another folder (or move them)"
            )
    else:
        manifest = read_manifest(out)  # a manifest we cannot read is not ours to replace
        if manifest["request"] == request and manifest["format_version"] == FORMAT_VERSION:
            return manifest
        diffs = differences(manifest["request"], request) or ["format_version"]
        if not overwrite:
            raise ValueError(
                f"{out} holds a different run (differs in: {', '.join(diffs)}); nothing was "
                "changed. Use another folder, or overwrite=True to replace it"
            )
        logger.info("replacing the run in %s (differs in: %s)", out, ", ".join(diffs))
        remove_owned(out, manifest)
    (out / TMP).mkdir(exist_ok=True)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "status": "running",
        "created": now(),
        "files": OWNED,
        "request": request,
    }
    dump_json(out, path, manifest)
    return None


def verified_result(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether a complete run's result files match their recorded checksums."""
    if manifest["result"] is not None:
        path = out / manifest["result"]
        return path.is_file() and sha256_file(path) == manifest["result_sha256"]
    for record in manifest["chunks"]:
        file = out / str(record["file"])
        if not file.is_file() or sha256_file(file) != record.get("sha256"):
            return False
    return True


def reopen(out: Path, manifest: dict[str, Any]) -> None:
    """A complete run whose result is damaged or missing becomes a running one: the assembled
    result is removed (its rows are recomputed); kept chunk files are checked one by one."""
    logger.warning("the result in %s does not match its checksum; recomputing it", out)
    if manifest["result"] is not None:
        (out / manifest["result"]).unlink(missing_ok=True)
    (out / TMP).mkdir(exist_ok=True)
    keep = ("format", "format_version", "created", "files", "request")
    dump_json(
        out,
        out / MANIFEST,
        {**{k: manifest[k] for k in keep if k in manifest}, "status": "running"},
    )
