"""The ``dnnbrain-captum`` command: every algorithm on your images and model, no code needed.

``dnnbrain-captum SUBCOMMAND [IMAGE ...] [options] --out DIR`` runs one algorithm and writes
its main array as ``DIR/result.npy`` (one row per image), further arrays under their own
names, figures ``NNN_STEM_KIND.png`` and ``results.json`` (what ran, on which images, which
files it wrote): one layout, whether the images are files, folders or ``--digits``, in memory
or streamed. ``dnnbrain-captum demo --out DIR`` runs every algorithm on the
bundled digits model and writes ``DIR/index.html``.

Errors (a missing or unreadable image, an unknown model or layer, a channel out of range, an
output folder that cannot be written, an output folder that already holds results without
``--overwrite``) print one line naming the culprit and exit with status 2; nothing is written
then, because results are first written into a temporary folder beside ``DIR`` and only moved
into place when everything succeeded.

``saliency``, ``occlusion`` and ``upsample`` stream a folder of images (or any images with
``--stream``) through :func:`dnnbrain_captum.run_over` instead: ``DIR`` becomes a resumable
runner folder (the same files plus ``manifest.json``, read with
:func:`dnnbrain_captum.read_results`); rerunning the same command resumes it, and a different
one is refused with one line naming what differs (see ``docs/cli.md``).

Examples
--------
>>> sorted(SUBCOMMANDS)[:4]
['atlas', 'demo', 'empirical-rf', 'mask']
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

# The subcommand modules register their options (torch-free); the parser needs only _args.
# Everything that imports torch is imported when a command runs, so --help stays fast.
from dnnbrain_captum.cli import atlas as atlas
from dnnbrain_captum.cli import demo as demo
from dnnbrain_captum.cli import images as images
from dnnbrain_captum.cli import maps as maps
from dnnbrain_captum.cli import receptive_fields as receptive_fields
from dnnbrain_captum.cli import saliency as saliency
from dnnbrain_captum.cli import synthesize as synthesize
from dnnbrain_captum.cli._args import PROG as PROG
from dnnbrain_captum.cli._args import SUBCOMMANDS as SUBCOMMANDS
from dnnbrain_captum.cli._args import CLIError as CLIError
from dnnbrain_captum.cli._args import Subcommand as Subcommand
from dnnbrain_captum.cli._args import _one_line as _one_line
from dnnbrain_captum.cli._args import build_parser as build_parser

# names kept importable from dnnbrain_captum.cli, loaded on first use (PEP 562)
_LAZY = {
    "_QUIET_WARNINGS": "dnnbrain_captum.cli._common",
    "RunContext": "dnnbrain_captum.cli._common",
    "_arguments_record": "dnnbrain_captum.cli._common",
    "_make_context": "dnnbrain_captum.cli._common",
    "load_model": "dnnbrain_captum.cli._common",
    "MANIFEST": "dnnbrain_captum.cli._outdir",
    "_occupied": "dnnbrain_captum.cli._outdir",
    "_staging": "dnnbrain_captum.cli._outdir",
    "write_results_json": "dnnbrain_captum.cli._outdir",
    "STREAMED": "dnnbrain_captum.cli._stream",
    "StreamJob": "dnnbrain_captum.cli._stream",
    "_streaming": "dnnbrain_captum.cli._stream",
    "_run_streamed": "dnnbrain_captum.cli._stream_run",
    "DemoPanel": "dnnbrain_captum.cli.demo",
    "mask_options": "dnnbrain_captum.cli.images",
    "minimal_options": "dnnbrain_captum.cli.images",
    "occlusion_options": "dnnbrain_captum.cli.maps",
    "empirical_rf_options": "dnnbrain_captum.cli.receptive_fields",
    "receptive_field_rows": "dnnbrain_captum.cli.receptive_fields",
    "saliency_arrays": "dnnbrain_captum.cli.saliency",
    "synthesis_options": "dnnbrain_captum.cli.synthesize",
    "synthesis_start": "dnnbrain_captum.cli.synthesize",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dnnbrain_captum.cli' has no attribute {name!r}")


__all__ = ["CLIError", "build_parser", "main"]


# ----------------------------------------------------------------------------- driver


def _run(args: argparse.Namespace) -> None:
    from dnnbrain_captum.cli._common import _QUIET_WARNINGS, _arguments_record, _make_context
    from dnnbrain_captum.cli._outdir import MANIFEST, _occupied, _staging, write_results_json
    from dnnbrain_captum.cli._stream import _streaming
    from dnnbrain_captum.cli._stream_run import _run_streamed

    command = SUBCOMMANDS[args.command]
    if command is atlas.ATLAS:  # writes into --out itself (resumable, no staging)
        atlas.ATLAS.run(args, None)  # type: ignore[arg-type]
        return
    if _streaming(args):
        _run_streamed(args, command)
        return
    if getattr(args, "skip_unreadable", False):
        raise CLIError(
            "--skip-unreadable applies to streamed runs (a folder of images, or --stream)"
        )
    out = Path(args.out)
    if _occupied(out) and not args.overwrite:
        raise CLIError(
            f"--out {out} already holds results; pass --overwrite to replace them or choose "
            "another folder"
        )
    synthesis = getattr(args, "synthesis", None) is not None  # mask --synthesis DIR
    if synthesis:
        from dnnbrain_captum.cli._from_synthesis import prepare_synthesis

        prepare_synthesis(args)
    ctx = _make_context(args, command, load_images=not synthesis)
    started = time.perf_counter()
    with _staging(out, args.overwrite) as staging:
        ctx.out = staging
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for quiet in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=quiet)
            command.run(args, ctx)
        notes = list(dict.fromkeys(_one_line(w.message) for w in caught))
        ctx.record["warnings"] = notes
        ctx.record.update(
            {
                "command": args.command,
                "mode": "memory",
                "arguments": _arguments_record(args),
                "model": args.model,
                "layer": args.layer,
                "images": ctx.sources,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        files = sorted(set(ctx.files))
        ctx.record["files"] = files + [MANIFEST]
        write_results_json(staging, ctx.record)
    if not args.quiet:
        for note in notes:
            sys.stderr.write(f"{PROG} {args.command}: note: {note}\n")
        sys.stderr.write(f"{PROG} {args.command}: wrote {len(files) + 1} files to {out}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dnnbrain-captum`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success. User errors raise ``SystemExit(2)`` after one line on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run(args)
    except CLIError as err:
        _fail(args.command, str(err))
    except (ValueError, TypeError, RuntimeError, NotImplementedError, OSError) as err:
        # the library's errors name the bad value; an unexpected exception type is a bug and
        # keeps its traceback
        _fail(args.command, str(err) or type(err).__name__)
    except KeyboardInterrupt:
        streamed = getattr(args, "_streamed_into", None)
        if streamed is not None:
            sys.stderr.write(
                f"{PROG} {args.command}: interrupted; the completed chunks are kept "
                f"in {streamed}: rerun the same command to resume\n"
            )
            raise SystemExit(130) from None
        sys.stderr.write(f"{PROG} {args.command}: interrupted, nothing written\n")
        raise SystemExit(130) from None
    return 0


def _fail(command: str, message: str) -> NoReturn:
    sys.stderr.write(f"{PROG} {command}: error: {_one_line(message)}\n")
    raise SystemExit(2)
