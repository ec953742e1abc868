"""Streamed runs of ``dnnbrain-captum``: a folder of images (or ``--stream``) through
:func:`dnnbrain_captum.run_over` into a resumable runner folder."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnnbrain_captum.cli._common import (
    _QUIET_WARNINGS,
    MANIFEST,
    PROG,
    CLIError,
    RunContext,
    Subcommand,
    _arguments_record,
    _make_context,
    _occupied,
    _one_line,
    _positive,
    _safe_stem,
)
from dnnbrain_captum.cli.maps import (
    occlusion_options,
)
from dnnbrain_captum.cli.saliency import (
    saliency_arrays,
)

# ----------------------------------------------------------------------------- streaming

RUN_MANIFEST = "manifest.json"  # written by dnnbrain_captum.run_over
RUN_RESULT = "result.npy"
RUN_CHUNKS = "chunks"
RUN_PARTIAL = ("result.partial.npy", "result.partial.done")  # a run being filled in place
PREDICTED = "predicted_classes"  # sub-folder: a run_over folder of each image's predicted class


class _Stimuli(torch.utils.data.Dataset):
    """Model-ready items ``(image, index)``: the IMAGE files and folders, read lazily, then the
    ``--digits`` images. ``ids`` are the files' paths relative to their common folder."""

    def __init__(
        self,
        images: Sequence[str],
        digits: Tensor | None,
        digit_sources: list[str],
        size: tuple[int, int],
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ) -> None:
        from dnnbrain_captum.io import ImageFolderDataset, Preprocess

        self.files = (
            ImageFolderDataset(images, transform=Preprocess(size=size, mean=mean, std=std))
            if images else None
        )
        self.size = size
        self.digits = digits
        self.normalize = Preprocess(mean=mean, std=std) if mean is not None else None
        paths = self.files.paths if self.files is not None else []
        self.n_files = len(paths)
        self.sources = [str(p) for p in paths] + digit_sources
        self.names = [_safe_stem(p) for p in paths] + [
            source.split(" ")[0].replace(":", "_").replace("[", "").replace("]", "")
            for source in digit_sources
        ]
        self.ids = (self.files.ids if self.files is not None else []) + digit_sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if index < self.n_files:
            assert self.files is not None
            return self.files[index]
        assert self.digits is not None
        image = self.digits[index - self.n_files]
        return (self.normalize(image) if self.normalize is not None else image), index

    def display(self, index: int) -> Tensor:
        """Item ``index`` in [0, 1] at the model's size, for figures."""
        from dnnbrain_captum.io import Preprocess, load_image

        if index < self.n_files:
            assert self.files is not None
            return Preprocess(size=self.size)(load_image(self.files.paths[index]))
        assert self.digits is not None
        return self.digits[index - self.n_files]


def _stimuli(args: argparse.Namespace, ctx: RunContext) -> _Stimuli:
    digits, digit_sources = None, []
    if args.digits is not None:
        if args.digits < 1:
            raise CLIError(f"--digits must be >= 1, got {args.digits}")
        from dnnbrain_captum.io import Preprocess
        from dnnbrain_captum.models import digits_images

        digits, labels = digits_images(n=args.digits)
        if digits.shape[-2:] != torch.Size(ctx.image_size):
            resize = Preprocess(size=ctx.image_size)
            digits = torch.stack([resize(d) for d in digits])
        digit_sources = [f"digits:test[{k}] (label {int(labels[k])})" for k in range(len(labels))]
    try:
        data = _Stimuli(args.images, digits, digit_sources, ctx.image_size, ctx.mean, ctx.std)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(_one_line(err)) from None
    if len(data) == 0:
        raise CLIError(f"{args.command} needs images: give files or folders, or --digits N")
    return data


class _PredictedClass:
    """``attribute(x)`` = the model's predicted class of each image (an int64 vector)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward_func = model

    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        with torch.no_grad():
            return self.forward_func(inputs).argmax(dim=1)


class _SmoothGradSaliency:
    """``saliency --smooth N`` as one attribution: :func:`saliency_arrays` on a batch (noise
    seeded by ``noise_seed`` before each image, as in the in-memory run)."""

    def __init__(self, model: nn.Module, layer: nn.Module | None, method: str) -> None:
        from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage

        self.forward_func, self.layer, self.method = model, layer, method
        cls = GuidedSaliencyImage if method == "guided" else VanillaSaliencyImage
        self.attribution_method = cls(model, layer)  # recorded as inner_class in the manifest

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        seed = kwargs.pop("noise_seed")
        return saliency_arrays(
            self.forward_func, self.layer, inputs, target, method=self.method, seed=seed, **kwargs
        ).detach()


@dataclass
class StreamJob:
    """What a streamed subcommand runs: ``run_over(attribution, ..., **kwargs)`` and a figure."""

    attribution: Any
    kwargs: dict[str, Any]
    batch_size: int
    target: Any  # an int channel, or PREDICTED (each image's predicted class)
    figure: Callable[[Tensor, Tensor, Any], Any]  # (result row, display image, target) -> Figure
    suffix: str
    record: dict[str, Any] = field(default_factory=dict)


def _stream_target(ctx: RunContext, channel: int | None) -> Any:
    if channel is not None:
        return channel
    if ctx.layer is not None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    return PREDICTED


def _what(ctx: RunContext, target: Any) -> str:
    return f"channel {target}" if ctx.layer is not None else f"class {target}"


def _stream_saliency(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage
    from dnnbrain_captum.visualization import saliency_figure

    if args.smooth < 0:
        raise CLIError(f"--smooth must be >= 0, got {args.smooth}")
    if args.sigma_multiplier < 0:
        raise CLIError(f"--sigma-multiplier must be >= 0, got {args.sigma_multiplier}")
    kwargs: dict[str, Any] = {"abs": args.abs}
    if ctx.layer is not None:
        kwargs["reduction"] = args.reduction
    attribution: Any
    if args.smooth > 0:
        attribution = _SmoothGradSaliency(ctx.model, ctx.layer, args.method)
        kwargs.update(smooth=args.smooth, sigma_multiplier=args.sigma_multiplier,
                      noise_seed=args.seed)
    else:
        cls = GuidedSaliencyImage if args.method == "guided" else VanillaSaliencyImage
        attribution = cls(ctx.model, ctx.layer)
    label = "guided" if args.method == "guided" else "vanilla"
    if args.smooth:
        label += f" SmoothGrad x{args.smooth}"
    return StreamJob(
        attribution, kwargs, _positive(args.batch_size, "--batch-size"),
        _stream_target(ctx, args.channel),
        lambda row, shown, t: saliency_figure(
            row, shown, sign="absolute_value", title=f"{label}, {_what(ctx, t)}"
        ),
        "saliency",
    )


def _stream_occlusion(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import OccluderDiscrepancyMapping
    from dnnbrain_captum.visualization import occlusion_figure

    options = occlusion_options(args, ctx.model_name)
    window = options["sliding_window_shapes"]
    if window[0] > ctx.image_size[0] or window[1] > ctx.image_size[1]:
        raise CLIError(
            f"--window {window[0]} {window[1]} is larger than the {ctx.image_size[0]}x"
            f"{ctx.image_size[1]} images"
        )
    record = {"options": {k: v for k, v in options.items() if k != "perturbations_per_eval"}}
    return StreamJob(
        OccluderDiscrepancyMapping(ctx.model, ctx.layer), options,
        _positive(args.batch_size, "--batch-size"), _stream_target(ctx, args.channel),
        lambda row, shown, t: occlusion_figure(
            row, shown, window, options["strides"], title=f"occlusion, {_what(ctx, t)}"
        ),
        "occlusion", record,
    )


def _stream_upsample(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import UpsamplingActivationMapping
    from dnnbrain_captum.visualization import activation_map_figure

    if args.channel is None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.binarize and args.threshold is None:
        raise CLIError("--binarize needs --threshold")
    kwargs = {"interpolate_mode": args.interpolate, "threshold": args.threshold,
              "binarize": args.binarize}
    return StreamJob(
        UpsamplingActivationMapping(ctx.model, ctx.layer), kwargs,
        _positive(args.batch_size, "--batch-size"), args.channel,
        lambda row, shown, t: activation_map_figure(
            row, shown, title=f"{ctx.layer_name} channel {t}"
        ),
        "upsample",
    )


STREAMED: dict[str, Callable[[argparse.Namespace, RunContext], StreamJob]] = {
    "saliency": _stream_saliency,
    "occlusion": _stream_occlusion,
    "upsample": _stream_upsample,
}


def _streaming(args: argparse.Namespace) -> bool:
    """Whether this run goes through the runner: --stream, or a folder among the images."""
    if args.command not in STREAMED:
        return False
    if args.stream is not None:
        return bool(args.stream)
    return any(Path(p).is_dir() for p in args.images)


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _is_run_folder(folder: Path) -> bool:
    try:
        from dnnbrain_captum.runner import read_manifest

        return read_manifest(folder).get("format") == "dnnbrain_captum.run"
    except (OSError, ValueError, AttributeError):
        return False


def _clear_previous(out: Path) -> None:
    """``--overwrite`` of a streamed run: remove the previous run's files (only ours)."""
    previous = out / MANIFEST
    listed: list[str] = []
    if previous.is_file():
        with contextlib.suppress(ValueError, AttributeError, OSError):
            listed = list(json.loads(previous.read_text(encoding="utf-8")).get("files", []))
    for name in [*listed, RUN_MANIFEST, RUN_RESULT, *RUN_PARTIAL]:
        target = out / str(name)
        if target.is_file() and target.parent == out:
            target.unlink()
    if (out / RUN_CHUNKS).is_dir():
        shutil.rmtree(out / RUN_CHUNKS)
    if _is_run_folder(out / PREDICTED):
        shutil.rmtree(out / PREDICTED)


def _cli_wording(message: str) -> str:
    """The runner's hints in command-line terms."""
    return (
        _one_line(message)
        .replace("overwrite=True", "--overwrite")
        .replace("pass on_error='skip'", "add --skip-unreadable")
        .replace("on_error='skip'", "--skip-unreadable")
        .replace("rerun run_over with the same arguments", "rerun the same command")
    )


@contextlib.contextmanager
def _runner_log_quiet() -> Iterator[None]:
    """The runner logs skipped items as warnings; the command prints its own notes."""
    import logging

    log = logging.getLogger("dnnbrain_captum.runner")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _run_streamed(args: argparse.Namespace, command: Subcommand) -> None:
    """Stream the images through ``dnnbrain_captum.run_over`` into ``--out`` (resumable)."""
    from dnnbrain_captum.runner import ItemLoadError, read_results, run_over

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    if args.max_figures < 0:
        raise CLIError(f"--max-figures must be >= 0, got {args.max_figures}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0, got {args.workers}")
    resuming = (out / RUN_MANIFEST).is_file()
    if _occupied(out) and not resuming and not args.overwrite:
        raise CLIError(
            f"--out {out} already holds files but no run to resume; pass --overwrite to "
            "replace them or choose another folder"
        )
    ctx = _make_context(args, command, load_images=False)
    data = _stimuli(args, ctx)
    ctx.sources, ctx.names = data.sources, data.names
    job = STREAMED[command.name](args, ctx)
    on_error = "skip" if args.skip_unreadable else "raise"
    started = time.perf_counter()
    try:
        if args.overwrite and out.is_dir() and _is_rank0():
            _clear_previous(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"output folder {out} is not writable: {_one_line(err)}") from None
    args._streamed_into = out
    before = (out / RUN_MANIFEST).read_bytes() if (out / RUN_MANIFEST).is_file() else None
    predicted_existed = (out / PREDICTED).exists()
    common = {"batch_size": job.batch_size, "on_error": on_error, "num_workers": args.workers,
              "show_progress": ctx.progress, "overwrite": args.overwrite}
    with warnings.catch_warnings(record=True) as caught, _runner_log_quiet():
        warnings.simplefilter("always")
        for quiet in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=quiet)
        try:
            targets: Any = job.target
            if job.target is PREDICTED:
                run_over(_PredictedClass(ctx.model), data, out=out / PREDICTED, **common)
                targets = read_results(out / PREDICTED, mmap=False).tolist()
            summary = run_over(job.attribution, data, targets=targets, out=out, **common,
                               **job.kwargs)
        except (ValueError, TypeError, RuntimeError, OSError) as err:
            unchanged = before is not None and (out / RUN_MANIFEST).is_file() and (
                (out / RUN_MANIFEST).read_bytes() == before
            )
            if unchanged and not predicted_existed and _is_rank0():
                shutil.rmtree(out / PREDICTED, ignore_errors=True)  # a refused rerun: undo
            if isinstance(err, (ValueError, ItemLoadError)):
                raise CLIError(_cli_wording(str(err))) from None
            raise
        if not _is_rank0():
            return
        result = read_results(out)
        skipped = {int(s["index"]) for s in summary.skipped}
        drawn: list[str] = []
        n_figures = 0 if not ctx.figures else min(args.max_figures, len(data))
        for k in range(n_figures):
            if k in skipped:
                continue
            target = targets[k] if isinstance(targets, list) else targets
            fig = job.figure(torch.from_numpy(np.array(result[k])), data.display(k), target)
            ctx.out = out
            ctx.save_figure(ctx.figure_name(k, job.suffix), fig)
            drawn.append(ctx.figure_name(k, job.suffix))
        del result
    notes = list(dict.fromkeys(_one_line(w.message) for w in caught))
    notes += [f"skipped unreadable image {data.sources[int(s['index'])]}: {_one_line(s['error'])}"
              for s in summary.skipped]
    files = sorted(set(drawn)) + [MANIFEST, RUN_MANIFEST, RUN_RESULT]
    if job.target is PREDICTED:
        files.append(PREDICTED)
    previous = out / MANIFEST
    if previous.is_file():  # figures of an earlier run of this folder not drawn this time
        with contextlib.suppress(ValueError, AttributeError, OSError):
            for name in json.loads(previous.read_text(encoding="utf-8")).get("files", []):
                stale = out / str(name)
                if name not in files and stale.suffix == ".png" and stale.parent == out:
                    stale.unlink(missing_ok=True)
    record = {
        "command": args.command,
        "arguments": _arguments_record(args),
        "model": args.model,
        "layer": args.layer,
        "mode": "stream",
        "result": RUN_RESULT,
        "run_manifest": RUN_MANIFEST,
        "images": data.sources,
        "targets": (f"predicted class of each image ({PREDICTED}/{RUN_RESULT})"
                    if job.target is PREDICTED else job.target),
        **job.record,
        "run": {"computed": summary.computed, "reused": summary.reused,
                "world_size": summary.world_size,
                "skipped": summary.skipped, "seconds": round(summary.seconds, 3)},
        "warnings": notes,
        "seconds": round(time.perf_counter() - started, 3),
        "files": files,
    }
    tmp = out / f"{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    if not args.quiet:
        for note in notes:
            sys.stderr.write(f"{PROG} {args.command}: note: {note}\n")
        ranks = f" (rank 0 of {summary.world_size})" if summary.world_size > 1 else ""
        sys.stderr.write(
            f"{PROG} {args.command}: {len(data)} images{ranks}: {summary.computed} computed, "
            f"{summary.reused} reused, {len(summary.skipped)} skipped; results in "
            f"{out / RUN_RESULT} ({len(drawn)} figure{'' if len(drawn) == 1 else 's'})\n"
        )
