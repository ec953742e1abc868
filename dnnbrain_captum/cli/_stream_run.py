"""A streamed ``dnnbrain-captum`` run: the images through :func:`dnnbrain_captum.run_over` into
``--out`` (resumable), then its figures and ``results.json`` published like any other run's.

The folder is locked for the whole command (rank 0); ``run_over`` owns and checks its own files
(``manifest.json``, ``result.npy``, ...; ``predicted_classes/`` is a run of its own), the command
owns the figures and ``results.json`` it recorded (see :mod:`dnnbrain_captum.cli._outdir`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnbrain_captum.cli._common import (
    _QUIET_WARNINGS,
    PROG,
    CLIError,
    RunContext,
    Subcommand,
    _arguments_record,
    _make_context,
    _one_line,
)
from dnnbrain_captum.cli._outdir import (
    MANIFEST,
    _locked_out,
    _occupied,
    check_out,
    previous_files,
    publish,
    write_results_json,
)
from dnnbrain_captum.cli._stream import (
    PREDICTED,
    RUN_MANIFEST,
    RUN_RESULT,
    STREAMED,
    StreamJob,
    _cli_wording,
    _PredictedClass,
    _Stimuli,
    _stimuli,
)
from dnnbrain_captum.runner import _lock


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def _runner_log_quiet() -> Iterator[None]:
    """The runner logs skipped items as warnings; the command prints its own notes."""
    log = logging.getLogger("dnnbrain_captum.runner")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_streamed_out(args: argparse.Namespace, out: Path) -> None:
    if args.max_figures < 0:
        raise CLIError(f"--max-figures must be >= 0, got {args.max_figures}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    check_out(out, overwrite=True)  # a file is refused
    if _occupied(out) and not (out / RUN_MANIFEST).is_file() and not args.overwrite:
        raise CLIError(
            f"--out {out} already holds files but no run to resume; pass --overwrite to "
            "replace them or choose another folder"
        )


def _run_streamed(args: argparse.Namespace, command: Subcommand) -> None:
    """Stream the images through ``dnnbrain_captum.run_over`` into ``--out`` (resumable)."""
    out = Path(args.out)
    _check_streamed_out(args, out)
    ctx = _make_context(args, command, load_images=False)
    data = _stimuli(args, ctx)
    ctx.sources, ctx.names = data.sources, data.names
    job = STREAMED[command.name](args, ctx)
    started = time.perf_counter()
    with _locked_out(out) if _is_rank0() else contextlib.nullcontext():
        previous = previous_files(out) if _is_rank0() else set()
        args._streamed_into = out
        summary, targets, notes = _run_jobs(args, ctx, data, job, out)
        if not _is_rank0():
            return
        staging = _lock.staging_folder(out)  # named in the lock file first
        try:
            ctx.out = staging
            drawn = _draw(args, ctx, data, job, targets, summary, out)
            notes += [
                f"skipped unreadable image {data.sources[int(s['index'])]}: {_one_line(s['error'])}"
                for s in summary.skipped
            ]
            record = _record(args, data, job, summary, drawn, notes, started)
            write_results_json(staging, record)
            publish(staging, out, previous)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not args.quiet:
        _report(args, data, summary, drawn, notes, out)


def _run_jobs(
    args: argparse.Namespace, ctx: RunContext, data: _Stimuli, job: StreamJob, out: Path
) -> tuple[Any, Any, list[str]]:
    """The ``run_over`` calls (predicted classes first when they are the targets); returns the
    summary, the targets and the warnings' notes."""
    from dnnbrain_captum.runner import ItemLoadError, read_results, run_over

    before = (out / RUN_MANIFEST).read_bytes() if (out / RUN_MANIFEST).is_file() else None
    predicted_existed = (out / PREDICTED).exists()
    common = {
        "batch_size": job.batch_size,
        "num_workers": args.workers,
        "on_error": "skip" if args.skip_unreadable else "raise",
        "show_progress": ctx.progress,
        "overwrite": args.overwrite,
    }
    with warnings.catch_warnings(record=True) as caught, _runner_log_quiet():
        warnings.simplefilter("always")
        for quiet in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=quiet)
        try:
            targets: Any = job.target
            if job.target is PREDICTED:
                run_over(_PredictedClass(ctx.model), data, out=out / PREDICTED, **common)
                targets = read_results(out / PREDICTED, mmap=False).tolist()
            summary = run_over(
                job.attribution, data, targets=targets, out=out, **common, **job.kwargs
            )
        except (ValueError, TypeError, RuntimeError, OSError) as err:
            unchanged = (
                before is not None
                and (out / RUN_MANIFEST).is_file()
                and ((out / RUN_MANIFEST).read_bytes() == before)
            )
            if (unchanged or before is None) and not predicted_existed and _is_rank0():
                shutil.rmtree(out / PREDICTED, ignore_errors=True)  # made by this refused call
            if isinstance(err, (ValueError, ItemLoadError)):
                raise CLIError(_cli_wording(str(err))) from None
            raise
    return summary, targets, list(dict.fromkeys(_one_line(w.message) for w in caught))


def _draw(
    args: argparse.Namespace,
    ctx: RunContext,
    data: _Stimuli,
    job: StreamJob,
    targets: Any,
    summary: Any,
    out: Path,
) -> list[str]:
    """Figures of the first ``--max-figures`` images into ``ctx.out`` (the staging folder)."""
    from dnnbrain_captum.runner import read_results

    result = read_results(out)
    skipped = {int(s["index"]) for s in summary.skipped}
    drawn: list[str] = []
    n_figures = 0 if not ctx.figures else min(args.max_figures, len(data))
    for k in range(n_figures):
        if k in skipped:
            continue
        target = targets[k] if isinstance(targets, list) else targets
        fig = job.figure(torch.from_numpy(np.array(result[k])), data.display(k), target)
        ctx.save_figure(ctx.figure_name(k, job.suffix), fig)
        drawn.append(ctx.figure_name(k, job.suffix))
    del result
    return sorted(set(drawn))


def _record(
    args: argparse.Namespace,
    data: _Stimuli,
    job: StreamJob,
    summary: Any,
    drawn: list[str],
    notes: list[str],
    started: float,
) -> dict[str, Any]:
    files = [*drawn, MANIFEST, RUN_MANIFEST, RUN_RESULT]
    if job.target is PREDICTED:
        files.append(PREDICTED)
    return {
        "command": args.command,
        "arguments": _arguments_record(args),
        "model": args.model,
        "layer": args.layer,
        "mode": "stream",
        "result": RUN_RESULT,
        "run_manifest": RUN_MANIFEST,
        "images": data.sources,
        "targets": (
            f"predicted class of each image ({PREDICTED}/{RUN_RESULT})"
            if job.target is PREDICTED
            else job.target
        ),
        **job.record,
        "run": {
            "computed": summary.computed,
            "reused": summary.reused,
            "world_size": summary.world_size,
            "skipped": summary.skipped,
            "seconds": round(summary.seconds, 3),
        },
        "warnings": notes,
        "seconds": round(time.perf_counter() - started, 3),
        "files": files,
    }


def _report(
    args: argparse.Namespace,
    data: _Stimuli,
    summary: Any,
    drawn: list[str],
    notes: list[str],
    out: Path,
) -> None:
    for note in notes:
        sys.stderr.write(f"{PROG} {args.command}: note: {note}\n")
    ranks = f" (rank 0 of {summary.world_size})" if summary.world_size > 1 else ""
    sys.stderr.write(
        f"{PROG} {args.command}: {len(data)} images{ranks}: {summary.computed} computed, "
        f"{summary.reused} reused, {len(summary.skipped)} skipped; results in "
        f"{out / RUN_RESULT} ({len(drawn)} figure{'' if len(drawn) == 1 else 's'})\n"
    )
