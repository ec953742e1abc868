"""The ``dnnbrain-captum`` command: every algorithm on your images and model, no code needed.

``dnnbrain-captum SUBCOMMAND [IMAGE ...] [options] --out DIR`` runs one algorithm and writes
NumPy arrays (``.npy``), PNG figures and ``results.json`` (what ran, on which images, which
files it wrote) into ``DIR``. ``dnnbrain-captum demo --out DIR`` runs every algorithm on the
bundled digits model and writes ``DIR/index.html``.

Errors (a missing or unreadable image, an unknown model or layer, a channel out of range, an
output folder that cannot be written, an output folder that already holds results without
``--overwrite``) print one line naming the culprit and exit with status 2; nothing is written
then, because results are first written into a temporary folder beside ``DIR`` and only moved
into place when everything succeeded.

``saliency``, ``occlusion`` and ``upsample`` stream a folder of images (or any images with
``--stream``) through :func:`dnnbrain_captum.run_over` instead: ``DIR`` becomes a resumable
runner folder (``result.npy`` + ``manifest.json``, read with
:func:`dnnbrain_captum.read_results`); rerunning the same command resumes it, a different one
is refused with one line naming what differs, and figures are drawn for the first
``--max-figures`` images only (see ``docs/cli.md``).

Examples
--------
>>> sorted(SUBCOMMANDS)[:4]
['demo', 'empirical-rf', 'mask', 'minimal']
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CLIError", "build_parser", "main"]

PROG = "dnnbrain-captum"
MANIFEST = "results.json"
_TMP_PREFIX = ".dnnbrain-captum-tmp-"
# expected warnings that say nothing to a command-line user
_QUIET_WARNINGS = (
    ".*did not already require gradients.*",
    ".*Setting backward hooks on ReLU activations.*",
)


class CLIError(Exception):
    """A user error: reported as one line on stderr with exit status 2."""


# ----------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        sys.stderr.write(f"{self.prog}: error: {_one_line(message)} (see --help)\n")
        raise SystemExit(2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw description/epilog; ``(default: X)`` added where a default means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _one_line(message: Any) -> str:
    return " ".join(str(message).split())


def _int_list(text: str) -> list[int]:
    """``"3"``, ``"0,4,7"`` or ``"0-7"`` (or a mix) → list of ints."""
    values: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer, a list such as 0,4,7 or a range such as 0-7, got {text!r}"
        ) from None
    return values


def _common_options(parser: argparse.ArgumentParser, images: bool = True) -> None:
    if images:
        parser.add_argument(
            "images",
            nargs="*",
            metavar="IMAGE",
            help="image files or folders of images (searched recursively)",
        )
        parser.add_argument(
            "--digits",
            type=int,
            default=None,
            metavar="N",
            help="use the first N bundled test digits as images (instead of, or after, files)",
        )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="digits",
        help="'digits' (the bundled model), a torchvision classification model name "
        "(alexnet, vgg16, resnet18, ...) or package.module:factory",
    )
    model.add_argument(
        "--weights",
        default=None,
        help="a state-dict file, or a torchvision weight name (DEFAULT, IMAGENET1K_V1, ...) "
        "already in the torch hub cache (nothing is downloaded); without it a torchvision "
        "model has random weights",
    )
    model.add_argument(
        "--layer",
        default=None,
        help="module path (features.10, layer4.1) or DNNBrain alias (conv5, conv5_relu, fc3)",
    )
    model.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="resize images to PX x PX (default: 32 for digits, 224 for other models)",
    )
    model.add_argument(
        "--device", default="cpu", help="torch device for the model and the images"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results already in DIR (by default a DIR holding files is refused)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    out.add_argument("--no-figures", action="store_true", help="write only the arrays")


def _channel_option(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    if multiple:
        parser.add_argument(
            "--channel",
            type=_int_list,
            default=None,
            metavar="C",
            help="0-BASED channel(s) of --layer: 3, 0,4,7 or 0-7 (DNNBrain counted from 1)",
        )
    else:
        parser.add_argument(
            "--channel",
            type=int,
            default=None,
            metavar="C",
            help="0-BASED channel of --layer (DNNBrain counted from 1); without --layer, the "
            "class index (default: each image's predicted class)",
        )


def _reduction_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reduction",
        choices=("mean", "max", "sum"),
        default="mean",
        help="how a channel map becomes one number (DNNBrain: mean)",
    )


def _window(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


@dataclass
class Subcommand:
    """One ``dnnbrain-captum`` subcommand."""

    name: str
    help: str
    description: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, RunContext], None]
    needs_images: bool = True
    needs_layer: bool = True
    takes_images: bool = True


SUBCOMMANDS: dict[str, Subcommand] = {}
_ORDER = ("saliency", "occlusion", "upsample", "synthesize", "mask", "minimal", "rf",
          "empirical-rf", "demo")


def _register(command: Subcommand) -> Subcommand:
    SUBCOMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dnnbrain-captum`` (one sub-parser per subcommand).

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> parser = build_parser()
    >>> args = parser.parse_args(["upsample", "a.png", "--layer", "conv5", "--channel", "3",
    ...                           "--out", "res"])
    >>> args.command, args.layer, args.channel
    ('upsample', 'conv5', 3)
    """
    parser = _Parser(
        prog=PROG,
        description="DNNBrain's interpretability algorithms on any PyTorch model, from the "
        "command line. Channels are 0-based.",
        epilog="examples:\n"
        f"  {PROG} demo --out demo/          # every algorithm on the bundled model\n"
        f"  {PROG} saliency --digits 4 --out sal/\n"
        f"  {PROG} upsample photos/ --model alexnet --weights alexnet.pth "
        "--layer conv5 --channel 121 --out maps/\n\n"
        f"Run '{PROG} SUBCOMMAND --help' for the options of each subcommand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dnnbrain_captum import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    order = {name: k for k, name in enumerate(_ORDER)}
    for command in sorted(SUBCOMMANDS.values(), key=lambda c: order.get(c.name, len(order))):
        child = sub.add_parser(
            command.name,
            help=command.help,
            description=textwrap.fill(command.description, 78),
            epilog=f"example:\n  {command.example}",
            formatter_class=_Formatter,
        )
        command.add_arguments(child)
    return parser


# ----------------------------------------------------------------------------- models and images


def _torchvision_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise CLIError(f"cannot read weights file {path}: {_one_line(err)}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _apply_weights_file(model: nn.Module, path: Path) -> None:
    state = _load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise CLIError(f"weights file {path} does not fit the model: {detail}") from None


def _torchvision_weights(name: str, weights: str) -> Any:
    """Resolve a torchvision weight name and check that its file is already cached."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        raise CLIError(f"torchvision has no weight names for model {name!r}") from None
    key = weights.split(".")[-1]
    try:
        chosen = enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise CLIError(
            f"--weights {weights!r} is neither a file nor a weight name of {name} ({valid})"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)
    if not cached.is_file():
        raise CLIError(
            f"--weights {weights}: {cached} is not on this machine (nothing is downloaded); "
            "download it once with torchvision or pass a state-dict file"
        )
    return chosen


def load_model(name: str, weights: str | None = None) -> nn.Module:
    """The model named on the command line, in eval mode.

    Parameters
    ----------
    name : str
        ``"digits"``, a torchvision classification model name, or ``"package.module:factory"``
        (a function called with no argument that returns an ``nn.Module``).
    weights : str, optional
        A state-dict file, or a torchvision weight name already in the torch hub cache.

    Returns
    -------
    nn.Module

    Raises
    ------
    CLIError
        For an unknown model, a factory that cannot be imported, unusable weights.
    """
    model: Any
    if name == "digits":
        from dnnbrain_captum.models import digits_cnn

        model = digits_cnn(pretrained=weights is None)
        if weights is not None:
            _apply_weights_file(model, _existing_file(weights))
        return model.eval()
    if ":" in name:
        module_name, _, factory_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - report any import failure as one line
            raise CLIError(f"cannot import {module_name!r} for --model {name}: "
                           f"{_one_line(err)}") from None
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise CLIError(f"--model {name}: {module_name} has no callable {factory_name!r}")
        model = factory()
        if not isinstance(model, nn.Module):
            raise CLIError(
                f"--model {name}: the factory returned {type(model).__name__}, not an nn.Module"
            )
        if weights is not None:
            _apply_weights_file(model, _existing_file(weights))
        return model.eval()
    known = _torchvision_models()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known + ["digits"], n=4, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise CLIError(
            f"unknown model {name!r}: use digits, a torchvision classification model name or "
            f"package.module:factory{hint}"
        )
    import torchvision.models as tvm

    if weights is not None and Path(weights).exists():
        model = tvm.get_model(name, weights=None)
        _apply_weights_file(model, _existing_file(weights))
    elif weights is not None:
        model = tvm.get_model(name, weights=_torchvision_weights(name, weights))
    else:
        model = tvm.get_model(name, weights=None)
    return model.eval()


def _existing_file(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"no such weights file: {file}")
    return file


@dataclass
class RunContext:
    """What every subcommand gets: the model, the chosen layer, the images, an output folder."""

    model: nn.Module
    model_name: str
    device: torch.device
    layer: nn.Module | None
    layer_name: str | None
    image_size: tuple[int, int]
    normalize: Callable[[Tensor], Tensor]
    mean: tuple[float, ...] | None = None  # the model's input normalisation (None: none)
    std: tuple[float, ...] | None = None
    images: Tensor | None = None  # model-ready (N, 3, H, W)
    display: Tensor | None = None  # the same images in [0, 1] (N, 3, H, W), for figures
    sources: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    out: Path = Path()
    files: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    figures: bool = True
    progress: bool = False

    def save_array(self, name: str, array: Tensor | np.ndarray) -> Path:
        """Write ``name`` (``.npy``) into the output folder."""
        data = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
        path = self.out / name
        np.save(path, data)
        self.files.append(name)
        return path

    def save_json(self, name: str, data: Any) -> Path:
        """Write ``name`` (``.json``) into the output folder."""
        path = self.out / name
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        self.files.append(name)
        return path

    def save_figure(self, name: str, fig: Any) -> Path | None:
        """Write a matplotlib figure as PNG (unless ``--no-figures``)."""
        from dnnbrain_captum.visualization import save_figure

        if not self.figures:
            return None
        path = self.out / name
        save_figure(fig, path)
        self.files.append(name)
        return path

    def batches(self, batch_size: int, desc: str) -> Iterator[tuple[int, Tensor]]:
        """``(start, batch)`` over the images, with a progress bar on long runs."""
        from tqdm.auto import tqdm

        assert self.images is not None
        n = self.images.shape[0]
        bar = tqdm(
            total=n,
            desc=desc,
            unit="img",
            disable=not self.progress or n <= batch_size,
            file=sys.stderr,
        )
        with bar:
            for start in range(0, n, batch_size):
                batch = self.images[start : start + batch_size]
                yield start, batch
                bar.update(batch.shape[0])

    def to_display(self, images: Tensor) -> Tensor:
        """Model-space images (N, 3, H, W) back to [0, 1] for figures."""
        shown = images.detach().cpu()
        if self.mean is not None and self.std is not None:
            std = torch.tensor(self.std, dtype=shown.dtype).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, dtype=shown.dtype).view(1, -1, 1, 1)
            shown = shown * std + mean
        return shown.clamp(0, 1)

    def figure_name(self, index: int, suffix: str) -> str:
        """``003_cat_saliency.png`` for image 3 named cat.jpg."""
        return f"{index:03d}_{self.names[index]}_{suffix}.png"


def _safe_stem(path: Path) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return keep[:60] or "image"


def _image_size(args: argparse.Namespace, model_name: str) -> tuple[int, int]:
    if args.image_size is not None:
        if args.image_size < 1:
            raise CLIError(f"--image-size must be >= 1, got {args.image_size}")
        return (args.image_size, args.image_size)
    return (32, 32) if model_name == "digits" else (224, 224)


def _load_images(
    args: argparse.Namespace, size: tuple[int, int], normalize: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, list[str], list[str]]:
    from dnnbrain_captum.io import Preprocess, find_images, load_image

    resize = Preprocess(size=size)
    display: list[Tensor] = []
    sources: list[str] = []
    names: list[str] = []
    if args.images:
        try:
            paths = find_images(args.images)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(_one_line(err)) from None
        for path in paths:
            try:
                display.append(resize(load_image(path)))
            except (FileNotFoundError, ValueError) as err:
                raise CLIError(_one_line(err)) from None
            sources.append(str(path))
            names.append(_safe_stem(path))
    if args.digits is not None:
        if args.digits < 1:
            raise CLIError(f"--digits must be >= 1, got {args.digits}")
        from dnnbrain_captum.models import digits_images

        digits, labels = digits_images(n=args.digits)
        if digits.shape[-2:] != torch.Size(size):
            digits = torch.stack([resize(d) for d in digits])
        for k in range(digits.shape[0]):
            display.append(digits[k])
            sources.append(f"digits:test[{k}] (label {int(labels[k])})")
            names.append(f"digit{k}_label{int(labels[k])}")
    stacked = torch.stack(display) if display else torch.empty(0, 3, *size)
    return normalize(stacked), stacked, sources, names


def _normalization(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from dnnbrain_captum.io import preprocessing_for

    step = preprocessing_for(model_name)
    if step.mean is None or step.std is None:
        return None
    return tuple(step.mean), tuple(step.std)


def _normalizer(model_name: str) -> Callable[[Tensor], Tensor]:
    stats = _normalization(model_name)
    if stats is None:
        return lambda x: x
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def _resolve_layer(model: nn.Module, layer: str | None) -> nn.Module | None:
    from dnnbrain_captum._utils.layers import resolve_layer

    if layer is None:
        return None
    try:
        return resolve_layer(model, layer)
    except (ValueError, TypeError) as err:
        raise CLIError(_one_line(err)) from None


def _layer_shape(ctx: RunContext) -> tuple[int, ...]:
    """Shape (C, ...) of the layer's output (or the model output) for one input."""
    from dnnbrain_captum._utils.hooks import run_to_layer

    if ctx.images is not None and ctx.images.shape[0] > 0:
        probe = ctx.images[:1]
    else:
        probe = torch.zeros(1, 3, *ctx.image_size, device=ctx.device)
    with torch.no_grad():
        try:
            output = run_to_layer(ctx.model, ctx.layer, (probe,))
        except RuntimeError as err:
            raise CLIError(
                f"--model {ctx.model_name} failed on a {tuple(probe.shape)} input: "
                f"{_one_line(err)}"
            ) from None
    if not isinstance(output, Tensor) or output.dim() < 2:
        raise CLIError(f"layer {ctx.layer_name} does not return one (N, C, ...) tensor")
    return tuple(output.shape[1:])


def _check_channels(ctx: RunContext, channels: Sequence[int] | None) -> None:
    if channels is None:
        return
    shape = _layer_shape(ctx)
    where = f"layer {ctx.layer_name}"
    if ctx.layer is None:
        where = f"the output of {ctx.model_name}"
    for channel in channels:
        if not 0 <= channel < shape[0]:
            raise CLIError(
                f"--channel {channel} is out of range for {where}: it has {shape[0]} channels, "
                f"0 to {shape[0] - 1} (channels are 0-based)"
            )


def _check_unit(ctx: RunContext, unit: Sequence[int] | None) -> None:
    if unit is None:
        return
    if ctx.layer is None:
        raise CLIError("--unit needs --layer (a unit is a position in a layer's map)")
    shape = _layer_shape(ctx)
    if len(shape) != 3:
        raise CLIError(
            f"--unit needs a layer with (C, H, W) output; {ctx.layer_name} gives {shape}"
        )
    if not (0 <= unit[0] < shape[1] and 0 <= unit[1] < shape[2]):
        raise CLIError(
            f"--unit {unit[0]} {unit[1]} is outside the {shape[1]}x{shape[2]} map of layer "
            f"{ctx.layer_name} (0-based row and column)"
        )


# ----------------------------------------------------------------------------- output folder


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


# ----------------------------------------------------------------------------- subcommands


def _targets_for(ctx: RunContext, channel: int | None, batch: Tensor) -> Any:
    """The target of a batch: the channel, or each image's predicted class for the output."""
    if channel is not None:
        return channel
    if ctx.layer is not None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    with torch.no_grad():
        logits = ctx.model(batch)
    return logits.argmax(dim=1).tolist()


def _add_saliency(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    parser.add_argument(
        "--method", choices=("vanilla", "guided"), default="vanilla", help="gradient rule"
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="SmoothGrad: average the gradient over N noisy copies (0: off)",
    )
    parser.add_argument(
        "--sigma-multiplier",
        type=float,
        default=0.1,
        help="SmoothGrad noise std as a fraction of each image's value range (DNNBrain's 0.1)",
    )
    parser.add_argument("--abs", action="store_true", help="absolute gradients (default signed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the SmoothGrad noise")
    _reduction_option(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    _stream_options(parser)


def saliency_arrays(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Any,
    method: str = "vanilla",
    smooth: int = 0,
    sigma_multiplier: float = 0.1,
    abs: bool = False,
    reduction: str = "mean",
    seed: int = 0,
) -> Tensor:
    """What ``dnnbrain-captum saliency`` computes for one batch of model-ready images.

    Plain saliency is one batched call. SmoothGrad runs image by image with the noise seeded
    by ``seed`` before each image (so an image's result does not depend on its neighbours),
    σ = ``sigma_multiplier`` × that image's value range (DNNBrain's σ).

    Returns
    -------
    Tensor of shape (N, C, H, W)
    """
    from captum.attr import NoiseTunnel

    from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage, smoothgrad_stdev

    cls = GuidedSaliencyImage if method == "guided" else VanillaSaliencyImage
    explainer = cls(model, layer)
    kwargs = {"abs": abs} if layer is None else {"abs": abs, "reduction": reduction}
    if smooth <= 0:
        return explainer.attribute(images, target=targets, **kwargs)
    per_image = targets if isinstance(targets, list) else [targets] * images.shape[0]
    results = []
    for k in range(images.shape[0]):
        x = images[k : k + 1]
        torch.manual_seed(seed)
        results.append(
            NoiseTunnel(explainer).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=smooth,
                stdevs=smoothgrad_stdev(x, sigma_multiplier),
                target=[per_image[k]],
                **kwargs,
            )
        )
    return torch.cat(results)


def _run_saliency(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.visualization import saliency_figure

    if args.smooth < 0:
        raise CLIError(f"--smooth must be >= 0, got {args.smooth}")
    if args.sigma_multiplier < 0:
        raise CLIError(f"--sigma-multiplier must be >= 0, got {args.sigma_multiplier}")
    assert ctx.images is not None and ctx.display is not None
    parts, used = [], []
    for _, batch in ctx.batches(_positive(args.batch_size, "--batch-size"), "saliency"):
        targets = _targets_for(ctx, args.channel, batch)
        used.extend(targets if isinstance(targets, list) else [targets] * batch.shape[0])
        parts.append(
            saliency_arrays(
                ctx.model,
                ctx.layer,
                batch,
                targets,
                method=args.method,
                smooth=args.smooth,
                sigma_multiplier=args.sigma_multiplier,
                abs=args.abs,
                reduction=args.reduction,
                seed=args.seed,
            ).detach()
        )
    result = torch.cat(parts)
    ctx.save_array("saliency.npy", result)
    ctx.record["targets"] = used
    label = "guided" if args.method == "guided" else "vanilla"
    if args.smooth:
        label += f" SmoothGrad x{args.smooth}"
    for k in range(result.shape[0]):
        what = f"channel {used[k]}" if ctx.layer is not None else f"class {used[k]}"
        fig = saliency_figure(
            result[k], ctx.display[k], sign="absolute_value", title=f"{label}, {what}"
        )
        ctx.save_figure(ctx.figure_name(k, "saliency"), fig)


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise CLIError(f"{name} must be >= 1, got {value}")
    return value


def _pair_arg(values: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise CLIError(f"{name} takes one or two integers (height width), got {len(values)}")


def _add_occlusion(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    parser.add_argument(
        "--window",
        type=_window,
        nargs="+",
        default=None,
        metavar="PX",
        help="occluder height [width] in pixels (default: 8 for digits, 11 otherwise)",
    )
    parser.add_argument(
        "--stride",
        type=_window,
        nargs="+",
        default=None,
        metavar="PX",
        help="step height [width] in pixels (default: 2)",
    )
    parser.add_argument(
        "--baseline",
        default="0",
        help="occluder value in model-input space, or 'noise' (uniform noise in the image's "
        "range, as Zhou et al. 2015)",
    )
    _reduction_option(parser)
    parser.add_argument(
        "--perturbations-per-eval",
        type=int,
        default=64,
        metavar="K",
        help="occluded copies per forward pass",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "incremental", "full"),
        default="auto",
        help="incremental: recompute only the part of each layer a window changes (exact); "
        "full: whole forward passes; auto: incremental where the model allows it",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    _stream_options(parser)


def _baseline_value(text: str) -> float | str:
    if text == "noise":
        return "noise"
    try:
        return float(text)
    except ValueError:
        raise CLIError(f"--baseline must be a number or 'noise', got {text!r}") from None


def occlusion_options(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Keyword arguments of ``OccluderDiscrepancyMapping.attribute`` from the command line."""
    default_window = 8 if model_name == "digits" else 11
    return {
        "sliding_window_shapes": _pair_arg(args.window, "--window")
        or (default_window, default_window),
        "strides": _pair_arg(args.stride, "--stride") or (2, 2),
        "baselines": _baseline_value(args.baseline),
        "reduction": args.reduction,
        "method": args.engine,
        "perturbations_per_eval": _positive(
            args.perturbations_per_eval, "--perturbations-per-eval"
        ),
    }


def _run_occlusion(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.attr import OccluderDiscrepancyMapping
    from dnnbrain_captum.visualization import occlusion_figure

    assert ctx.images is not None and ctx.display is not None
    options = occlusion_options(args, ctx.model_name)
    window = options["sliding_window_shapes"]
    if window[0] > ctx.image_size[0] or window[1] > ctx.image_size[1]:
        raise CLIError(
            f"--window {window[0]} {window[1]} is larger than the {ctx.image_size[0]}x"
            f"{ctx.image_size[1]} images"
        )
    explainer = OccluderDiscrepancyMapping(ctx.model, ctx.layer)
    parts, used = [], []
    batch_size = _positive(args.batch_size, "--batch-size")
    for _, batch in ctx.batches(batch_size, "occlusion"):
        targets = _targets_for(ctx, args.channel, batch)
        used.extend(targets if isinstance(targets, list) else [targets] * batch.shape[0])
        parts.append(
            explainer.attribute(
                batch, target=targets, show_progress=ctx.progress, **options
            ).detach()
        )
    result = torch.cat(parts)
    ctx.save_array("occlusion.npy", result)
    ctx.record["targets"] = used
    ctx.record["options"] = {k: v for k, v in options.items() if k != "perturbations_per_eval"}
    for k in range(result.shape[0]):
        what = f"channel {used[k]}" if ctx.layer is not None else f"class {used[k]}"
        fig = occlusion_figure(
            result[k], ctx.display[k], window, options["strides"], title=f"occlusion, {what}"
        )
        ctx.save_figure(ctx.figure_name(k, "occlusion"), fig)


def _add_upsample(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    parser.add_argument(
        "--interpolate",
        choices=("nearest", "bilinear", "bicubic", "area"),
        default="bicubic",
        help="interpolation of the channel map to the image size",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="Q",
        help="raise values below the Q-quantile (in [0, 1]) to it (DNNBrain's interp_threshold)",
    )
    parser.add_argument(
        "--binarize", action="store_true", help="with --threshold: 1 above the quantile, else 0"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    _stream_options(parser)


def _run_upsample(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.attr import UpsamplingActivationMapping
    from dnnbrain_captum.visualization import activation_map_figure

    assert ctx.images is not None and ctx.display is not None
    if args.channel is None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.binarize and args.threshold is None:
        raise CLIError("--binarize needs --threshold")
    explainer = UpsamplingActivationMapping(ctx.model, ctx.layer)
    parts = [
        explainer.attribute(
            batch,
            target=args.channel,
            interpolate_mode=args.interpolate,
            threshold=args.threshold,
            binarize=args.binarize,
        )
        for _, batch in ctx.batches(_positive(args.batch_size, "--batch-size"), "upsample")
    ]
    result = torch.cat(parts)
    ctx.save_array("upsample.npy", result)
    for k in range(result.shape[0]):
        fig = activation_map_figure(
            result[k], ctx.display[k], title=f"{ctx.layer_name} channel {args.channel}"
        )
        ctx.save_figure(ctx.figure_name(k, "upsample"), fig)


_register(
    Subcommand(
        name="saliency",
        help="gradient (vanilla or guided, optionally SmoothGrad) of a channel or class",
        description="Saliency image: the gradient of a layer's channel (its spatial mean, or "
        "--reduction) or of a class logit with respect to the image. Writes saliency.npy "
        "(N, 3, H, W), signed unless --abs, and one figure per image. Without --layer the "
        "model output is explained (--channel is then the class; default the predicted one).",
        example=f"{PROG} saliency cat.jpg --model alexnet --weights alexnet.pth "
        "--layer conv5 --channel 122 --method guided --smooth 20 --out saliency/",
        add_arguments=_add_saliency,
        run=_run_saliency,
        needs_layer=False,
    )
)
_register(
    Subcommand(
        name="occlusion",
        help="how much a channel or class drops when a window of the image is covered",
        description="Occluder discrepancy map: slide a window over each image and record "
        "original minus occluded value of the target. Writes occlusion.npy (N, rows, cols) with "
        "rows = floor((H - window) / stride) + 1, and one figure per image.",
        example=f"{PROG} occlusion --digits 4 --layer conv5 --channel 3 --window 8 --stride 2 "
        "--out occlusion/",
        add_arguments=_add_occlusion,
        run=_run_occlusion,
        needs_layer=False,
    )
)
_register(
    Subcommand(
        name="upsample",
        help="a channel's activation map interpolated to the image size",
        description="Upsampled activation map of one channel of --layer. Writes upsample.npy "
        "(N, H, W) and one figure per image.",
        example=f"{PROG} upsample photos/ --model vgg16 --weights DEFAULT --layer conv8 "
        "--channel 5 --threshold 0.95 --out maps/",
        add_arguments=_add_upsample,
        run=_run_upsample,
    )
)


def _unit_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--unit", type=int, nargs=2, default=None, metavar=("ROW", "COL"), help=help_text
    )


def _add_rf(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _unit_option(
        parser,
        "0-based unit (row, column) of --layer whose field is drawn (default: the centre unit)",
    )


def receptive_field_rows(table: Any) -> list[dict[str, Any]]:
    """The rows of a ``ReceptiveFieldTable`` as JSON-ready dictionaries."""
    aliases = table.aliases()
    by_path = {path: alias for alias, path in aliases.items()}
    rows = []
    for key in table:
        if key in aliases:
            continue
        entry = table[key]
        rows.append(
            {
                "layer": key,
                "alias": by_path.get(key),
                "module": entry.module_type,
                "spatial": entry.spatial,
                "size": None if entry.size is None else list(entry.size),
                "stride": None if entry.stride is None else list(entry.stride),
                "padding": None if entry.padding is None else list(entry.padding),
                "output_size": None if entry.output_size is None else list(entry.output_size),
                "box": [list(pair) for pair in entry.box],
            }
        )
    return rows


def _run_rf(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.receptive_field import TheoreticalReceptiveField
    from dnnbrain_captum.visualization import receptive_field_figure

    analysis = TheoreticalReceptiveField(ctx.model, (3, *ctx.image_size))
    try:
        table = analysis.compute()
    except NotImplementedError as err:
        raise CLIError(f"--model {ctx.model_name}: {_one_line(err)}") from None
    ctx.save_json("receptive_field.json", receptive_field_rows(table))
    (ctx.out / "receptive_field.txt").write_text(table.to_text() + "\n", encoding="utf-8")
    ctx.files.append("receptive_field.txt")
    if ctx.layer is None:
        return
    entry = analysis[ctx.layer]
    if not entry.spatial:
        raise CLIError(
            f"layer {ctx.layer_name} has no spatial units (flattened or Linear); its units "
            f"together see rows {entry.box[0]} and columns {entry.box[1]}"
        )
    assert entry.output_size is not None
    unit = tuple(args.unit) if args.unit is not None else (
        entry.output_size[0] // 2, entry.output_size[1] // 2
    )
    region = analysis.find_region(ctx.layer, unit)
    ctx.save_array("region.npy", np.asarray(region, dtype=np.int64))
    ctx.record["region"] = {"layer": ctx.layer_name, "unit": list(unit),
                            "rows": list(region[0]), "columns": list(region[1])}
    label = [f"{ctx.layer_name} unit {unit}: rows {region[0]}, cols {region[1]}"]
    if ctx.display is None:
        canvas = torch.full((3, *ctx.image_size), 0.5)
        ctx.save_figure("receptive_field.png", receptive_field_figure(canvas, [region], label))
        return
    for k in range(ctx.display.shape[0]):
        fig = receptive_field_figure(ctx.display[k], [region], label)
        ctx.save_figure(ctx.figure_name(k, "rf"), fig)


_register(
    Subcommand(
        name="rf",
        help="theoretical receptive field of every layer; a unit's field drawn on the images",
        description="Theoretical receptive fields (size, stride, effective padding, output size) "
        "of every layer of the model at the input size, from its actual computation graph. "
        "Writes receptive_field.json and receptive_field.txt; with --layer (and --unit) also "
        "region.npy, the unit's half-open pixel box [[h0, h1], [w0, w1]], and a figure per "
        "image (or one on a grey canvas when no image is given).",
        example=f"{PROG} rf --model alexnet --layer conv5 --unit 6 6 --out rf/",
        add_arguments=_add_rf,
        run=_run_rf,
        needs_images=False,
        needs_layer=False,
    )
)


def _add_synthesize(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser, multiple=True)
    _unit_option(parser, "maximise this 0-based unit (row, column) of each channel instead of "
                 "the channel's mean")
    parser.add_argument(
        "--preset",
        choices=("default", "lucent", "dnnbrain", "dnnbrain-guide"),
        default="default",
        help="named settings (default: Fourier parametrisation with colour decorrelation and "
        "random transforms; dnnbrain: the DNNBrain paper's pixels + TV settings)",
    )
    parser.add_argument("--n-iter", type=int, default=None, help="optimisation steps")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument("--param", choices=("pixel", "fft"), default=None,
                        help="image parametrisation")
    parser.add_argument("--tv", type=float, default=None, metavar="W",
                        help="total-variation regulariser weight")
    parser.add_argument("--l1", type=float, default=None, metavar="W", help="L1 weight")
    parser.add_argument("--l2", type=float, default=None, metavar="W", help="L2 weight")
    parser.add_argument("--blur-sigma", type=float, default=None,
                        help="Gaussian-blur preconditioning sigma in pixels (DNNBrain's GB)")
    parser.add_argument("--fourier-factor", type=float, default=None,
                        help="Fourier gradient smoothing factor (DNNBrain's smooth_metric)")
    parser.add_argument("--no-transforms", action="store_true",
                        help="no random jitter/scale/rotation during optimisation")
    parser.add_argument("--init", choices=("grey", "uniform"), default="grey",
                        help="random start when no IMAGE is given (one image, or one per "
                        "channel, may be given instead)")
    _reduction_option(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and transforms")


def synthesis_options(args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments of ``SynthesisImage.attribute`` from the command line."""
    regularizers = {
        name: weight
        for name, weight in (("tv", args.tv), ("l1", args.l1), ("l2", args.l2))
        if weight is not None
    }
    options: dict[str, Any] = {
        "preset": args.preset,
        "reduction": args.reduction,
        "mean": ctx.mean,
        "std": ctx.std,
        "seed": args.seed,
        "return_history": True,
    }
    for key, value in (
        ("n_iter", args.n_iter),
        ("lr", args.lr),
        ("param", args.param),
        ("blur_sigma", args.blur_sigma),
        ("fourier_factor", args.fourier_factor),
    ):
        if value is not None:
            options[key] = value
    if regularizers:
        options["regularizers"] = regularizers
    if args.no_transforms:
        options["transforms"] = "none"
    return options


def synthesis_start(args: argparse.Namespace, ctx: RunContext, n: int) -> Tensor:
    """The initial images: the given images (one, or one per channel) or random ones."""
    from dnnbrain_captum.optim import random_images

    if ctx.images is None:
        return random_images(
            n, ctx.image_size, kind=args.init, seed=args.seed, mean=ctx.mean, std=ctx.std,
            device=ctx.device,
        )
    if ctx.images.shape[0] == 1:
        return ctx.images.expand(n, -1, -1, -1).clone()
    if ctx.images.shape[0] != n:
        raise CLIError(
            f"give one start image or one per channel: got {ctx.images.shape[0]} images for "
            f"{n} channels"
        )
    return ctx.images


def _run_synthesize(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.optim import SynthesisImage
    from dnnbrain_captum.visualization import synthesis_grid

    if not args.channel:
        what = f"a channel of {ctx.layer_name}" if ctx.layer is not None else "a class"
        raise CLIError(f"synthesize needs --channel ({what}, 0-based; e.g. 0-7)")
    channels = list(args.channel)
    if args.unit is not None and ctx.layer is None:
        raise CLIError("--unit needs --layer")
    targets: list[Any] = (
        [(c, args.unit[0], args.unit[1]) for c in channels] if args.unit is not None
        else channels
    )
    start = synthesis_start(args, ctx, len(channels))
    options = synthesis_options(args, ctx)
    result = SynthesisImage(ctx.model, ctx.layer).attribute(
        start, target=targets, show_progress=ctx.progress, **options
    )
    ctx.save_array("synthesis.npy", result.images.detach())
    ctx.save_array("activation.npy", result.activation.detach())
    ctx.record["targets"] = [list(t) if isinstance(t, tuple) else t for t in targets]
    shown = ctx.to_display(result.images)
    where = ctx.layer_name or "class"
    final = result.activation[:, -1].tolist()
    titles = [f"{where} {c}: {v:.3g}" for c, v in zip(channels, final, strict=True)]
    ctx.save_figure("synthesis.png", synthesis_grid(shown, titles))


_register(
    Subcommand(
        name="synthesize",
        help="images that maximise channels (activation maximisation), one per channel",
        description="Activation maximisation: optimise one image per --channel (a list such as "
        "0-7 synthesises a whole grid in one batch) so that the channel's mean (or --unit, or a "
        "class logit without --layer) is as large as possible. Writes synthesis.npy (K, 3, H, "
        "W) in model space, activation.npy (K, n_iter + 1), the target's value along the "
        "optimisation, and synthesis.png.",
        example=f"{PROG} synthesize --layer conv5 --channel 0-7 --n-iter 64 --out synth/",
        add_arguments=_add_synthesize,
        run=_run_synthesize,
        needs_images=False,
        needs_layer=False,
    )
)


def _target_with_unit(
    ctx: RunContext, args: argparse.Namespace, batch: Tensor
) -> tuple[Any, list[Any]]:
    """The target of a batch (channel, unit or predicted classes) and its per-image record."""
    unit = getattr(args, "unit", None)
    if unit is not None:
        if ctx.layer is None:
            raise CLIError("--unit needs --layer")
        if args.channel is None:
            raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
        target: Any = (args.channel, unit[0], unit[1])
        return target, [list(target)] * batch.shape[0]
    target = _targets_for(ctx, args.channel, batch)
    return target, target if isinstance(target, list) else [target] * batch.shape[0]


def _add_mask(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    _unit_option(parser, "explain this 0-based unit (row, column) of the channel")
    parser.add_argument("--stdev-size-thr", type=float, default=1.0,
                        help="contrast threshold in standard deviations")
    parser.add_argument("--filter-sigma", type=float, default=1.0,
                        help="Gaussian blur of the mask in pixels")
    parser.add_argument("--ratio", type=float, default=0.9,
                        help="erode until the activation is at most RATIO x the hull's")
    parser.add_argument("--max-iter", type=int, default=100, help="most erosions tried")
    _reduction_option(parser)
    parser.add_argument("--perturbations-per-eval", type=int, default=16, metavar="K",
                        help="erosion depths per forward pass")


def mask_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``MaskedImage.attribute`` from the command line."""
    return {
        "stdev_size_thr": args.stdev_size_thr,
        "filter_sigma": args.filter_sigma,
        "target_reduction_ratio": args.ratio,
        "max_iter": args.max_iter,
        "reduction": args.reduction,
        "perturbations_per_eval": args.perturbations_per_eval,
        "return_masks": True,
    }


def _run_mask(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.attr.masked import MaskedImage
    from dnnbrain_captum.visualization import minimal_image_figure

    assert ctx.images is not None and ctx.display is not None
    target, used = _target_with_unit(ctx, args, ctx.images)
    result = MaskedImage(ctx.model, ctx.layer).attribute(
        ctx.images, target=target, show_progress=ctx.progress, **mask_options(args)
    )
    ctx.save_array("masked.npy", result.images)
    ctx.save_array("masks.npy", result.masks)
    ctx.record["targets"] = used
    ctx.record["activation"] = result.activation.tolist()
    ctx.record["baseline"] = result.baseline.tolist()
    ctx.record["n_erosions"] = result.n_erosions.tolist()
    shown = ctx.to_display(result.images)
    for k in range(shown.shape[0]):
        fig = minimal_image_figure(
            ctx.display[k], shown[k], result.masks[k, 0],
            ("original", f"masked ({int(result.n_erosions[k])} erosions)", "mask"),
        )
        ctx.save_figure(ctx.figure_name(k, "mask"), fig)


PARCEL_METHODS = ("felzenszwalb", "slic", "quickshift")
COMPONENT_METHODS = ("pca", "ica")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _add_minimal(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    _unit_option(parser, "explain this 0-based unit (row, column) of the channel")
    parser.add_argument(
        "--method",
        choices=PARCEL_METHODS + COMPONENT_METHODS,
        default="felzenszwalb",
        help="superpixels (felzenszwalb, slic, quickshift: MinimalParcelImage) or image "
        "components (pca, ica: MinimalComponentImage)",
    )
    parser.add_argument(
        "--search",
        choices=("max", "fitting_curve", "threshold", "removal"),
        default="max",
        help="how the kept parcels/components are chosen",
    )
    parser.add_argument(
        "--activation-criterion",
        choices=("max", "mean", "median", "L1", "L2"),
        default="max",
        help="pooling of a channel's map into one activation",
    )
    parser.add_argument("--ratio", type=float, default=0.9,
                        help="fraction of the original activation to keep (threshold, removal)")
    parser.add_argument("--max-parts", type=int, default=None, metavar="K",
                        help="longest ranking prefix considered (DNNBrain: 10)")
    parser.add_argument("--segment", type=_key_value, action="append", default=None,
                        metavar="KEY=VALUE",
                        help="segmentation option, e.g. n_segments=50 (repeatable)")
    parser.add_argument("--baseline", default="0",
                        help="value of removed pixels in model space, or 'mean' (parcels)")
    parser.add_argument("--sampling", choices=("patches", "pixels"), default="patches",
                        help="what a sample is for pca/ica")
    parser.add_argument("--patch-size", type=int, default=8, help="tile side for pca/ica")
    parser.add_argument("--n-components", type=int, default=None,
                        help="components per image for pca/ica (default: full rank)")
    parser.add_argument("--seed", type=int, default=0, help="FastICA's random state")
    parser.add_argument("--perturbations-per-eval", type=int, default=64, metavar="K",
                        help="candidate images per forward pass")


def minimal_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the minimal-image class chosen by ``--method``."""
    common: dict[str, Any] = {
        "search_criterion": args.search,
        "activation_criterion": args.activation_criterion,
        "activation_ratio": args.ratio,
        "perturbations_per_eval": args.perturbations_per_eval,
    }
    if args.method in COMPONENT_METHODS:
        return {
            **common,
            "decomposition": args.method,
            "sampling": args.sampling,
            "patch_size": args.patch_size,
            "n_components": args.n_components,
            "max_components": args.max_parts,
            "seed": args.seed,
        }
    baseline: Any = args.baseline
    if baseline != "mean":
        try:
            baseline = float(baseline)
        except ValueError:
            raise CLIError(f"--baseline must be a number or 'mean', got {baseline!r}") from None
    return {
        **common,
        "segmentation": args.method,
        "segmentation_kwargs": dict(args.segment) if args.segment else None,
        "baselines": baseline,
        "max_parcels": args.max_parts,
    }


def _run_minimal(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.visualization import minimal_image_figure

    assert ctx.images is not None and ctx.display is not None
    target, used = _target_with_unit(ctx, args, ctx.images)
    options = minimal_options(args)
    components = args.method in COMPONENT_METHODS
    if components:
        from dnnbrain_captum.attr.minimal_component import MinimalComponentImage

        explainer: Any = MinimalComponentImage(ctx.model, ctx.layer)
    else:
        from dnnbrain_captum.attr.minimal import MinimalParcelImage

        explainer = MinimalParcelImage(ctx.model, ctx.layer)
    result = explainer.attribute(
        ctx.images, target=target, show_progress=ctx.progress, **options
    )
    ctx.save_array("minimal.npy", result.images)
    if components:
        ctx.save_array("selected.npy", result.selected)
        total = [int(result.selected.shape[1])] * result.images.shape[0]
    else:
        ctx.save_array("kept.npy", result.masks)
        ctx.save_array("parcels.npy", result.labels)
        total = result.n_parcels.tolist()
    ctx.record["targets"] = used
    ctx.record["n_selected"] = result.n_selected.tolist()
    ctx.record["n_total"] = total
    ctx.record["activation"] = result.activation.tolist()
    ctx.record["original_activation"] = result.original_activation.tolist()
    shown = ctx.to_display(result.images)
    part = "components" if components else "parcels"
    for k in range(shown.shape[0]):
        kept = None if components else result.masks[k].float()
        titles = ("original", f"minimal: {int(result.n_selected[k])} of {total[k]} {part}",
                  "kept pixels")
        fig = minimal_image_figure(ctx.display[k], shown[k], kept, titles)
        ctx.save_figure(ctx.figure_name(k, "minimal"), fig)


def _has_module(name: str) -> bool:
    """Whether a module exists, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


if _has_module("dnnbrain_captum.attr.masked"):
    _register(
        Subcommand(
            name="mask",
            help="tight mask around the high-contrast region that still drives a channel",
            description="Masked image (Walker et al. 2019; DNNBrain's MaskedImage): the convex "
            "hull of the image's high-contrast pixels, blurred, then eroded until the target's "
            "activation falls to --ratio of the hull image's. Writes masked.npy (N, 3, H, W) in "
            "model space, masks.npy (N, 1, H, W) and one figure per image; activations and "
            "erosion counts go into results.json.",
            example=f"{PROG} mask --digits 4 --layer conv5 --channel 3 --ratio 0.9 --out mask/",
            add_arguments=_add_mask,
            run=_run_mask,
            needs_layer=False,
        )
    )
if _has_module("dnnbrain_captum.attr.minimal") and _has_module(
    "dnnbrain_captum.attr.minimal_component"
):
    _register(
        Subcommand(
            name="minimal",
            help="the fewest superpixels (or PCA/ICA components) that still drive a channel",
            description="Minimal image: cut each image into superpixels (felzenszwalb, slic, "
            "quickshift; MinimalParcelImage) or image components (pca, ica; "
            "MinimalComponentImage) and keep the fewest that still drive the target (--search). "
            "Writes minimal.npy (N, 3, H, W) in model space, kept.npy (N, H, W) and parcels.npy "
            "(N, H, W) for superpixels or selected.npy (N, K) for components, and one figure "
            "per image.",
            example=f"{PROG} minimal photo.jpg --model alexnet --weights alexnet.pth --layer "
            "conv5 --channel 121 --method slic --segment n_segments=100 --out minimal/",
            add_arguments=_add_minimal,
            run=_run_minimal,
            needs_layer=False,
        )
    )


def _add_empirical_rf(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    parser.add_argument("--engine", choices=("upsample", "occlusion"), default="upsample",
                        help="the map measured on each image")
    parser.add_argument("--alignment", choices=("activation", "map"), default="activation",
                        help="best unit per image: highest activation (Zhou et al.) or "
                        "highest mean map over its field (DNNBrain)")
    parser.add_argument("--size-threshold", type=float, default=0.5,
                        help="fraction of the mean map's range that defines the size (0.5: "
                        "full width at half maximum)")
    parser.add_argument("--interpolate", choices=("nearest", "bilinear", "bicubic", "area"),
                        default="bicubic", help="upsample engine: interpolation")
    parser.add_argument("--threshold", type=float, default=None, metavar="Q",
                        help="upsample engine: floor below the Q-quantile (DNNBrain used 0.5)")
    parser.add_argument("--window", type=_window, nargs="+", default=None, metavar="PX",
                        help="occlusion engine: window height [width] (default: 8 for "
                        "digits, 11 otherwise)")
    parser.add_argument("--stride", type=_window, nargs="+", default=None, metavar="PX",
                        help="occlusion engine: step height [width] (default: 2)")
    parser.add_argument("--baseline", default="0",
                        help="occlusion engine: occluder value in model space, or 'noise'")
    _reduction_option(parser)
    parser.add_argument("--perturbations-per-eval", type=int, default=64, metavar="K",
                        help="occlusion engine: occluded copies per forward pass")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")


def empirical_rf_options(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Keyword arguments of ``EmpiricalReceptiveField.attribute`` (engine options included)."""
    options: dict[str, Any] = {
        "alignment": args.alignment,
        "size_threshold": args.size_threshold,
    }
    if args.engine == "upsample":
        options.update(interpolate_mode=args.interpolate, threshold=args.threshold)
    else:
        default_window = 8 if model_name == "digits" else 11
        options.update(
            sliding_window_shapes=_pair_arg(args.window, "--window")
            or (default_window, default_window),
            strides=_pair_arg(args.stride, "--stride") or (2, 2),
            baselines=_baseline_value(args.baseline),
            reduction=args.reduction,
            perturbations_per_eval=_positive(
                args.perturbations_per_eval, "--perturbations-per-eval"
            ),
        )
    return options


def _run_empirical_rf(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.attr import OccluderDiscrepancyMapping, UpsamplingActivationMapping
    from dnnbrain_captum.receptive_field import EmpiricalReceptiveField
    from dnnbrain_captum.visualization import empirical_rf_figure

    assert ctx.images is not None
    if args.channel is None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    if not 0.0 < args.size_threshold < 1.0:
        raise CLIError(f"--size-threshold must lie in (0, 1), got {args.size_threshold}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1], got {args.threshold}")
    options = empirical_rf_options(args, ctx.model_name)
    if args.engine == "occlusion":
        window = options["sliding_window_shapes"]
        if window[0] > ctx.image_size[0] or window[1] > ctx.image_size[1]:
            raise CLIError(
                f"--window {window[0]} {window[1]} is larger than the {ctx.image_size[0]}x"
                f"{ctx.image_size[1]} images"
            )
        engine: Any = OccluderDiscrepancyMapping(ctx.model, ctx.layer)
    else:
        engine = UpsamplingActivationMapping(ctx.model, ctx.layer)
    measure = EmpiricalReceptiveField(engine)
    batch_size = _positive(args.batch_size, "--batch-size")
    batches = [batch for _, batch in ctx.batches(batch_size, "empirical-rf")]
    result = measure.attribute(
        batches if len(batches) > 1 else batches[0], target=args.channel, **options
    )
    theory = measure.theoretical((3, *ctx.image_size))
    size = [int(v) for v in result.size.tolist()]
    ctx.save_array("empirical_rf.npy", result.map)
    ctx.save_json(
        "empirical_rf.json",
        {
            "layer": ctx.layer_name,
            "channel": args.channel,
            "engine": args.engine,
            "n_images": int(ctx.images.shape[0]),
            "size": size,
            "theoretical_size": list(theory.size) if theory.size is not None else None,
        },
    )
    title = f"{ctx.layer_name} channel {args.channel} ({args.engine})"
    ctx.save_figure("empirical_rf.png", empirical_rf_figure(result.map, size, title=title))


if _has_module("dnnbrain_captum.receptive_field.empirical"):
    _register(
        Subcommand(
            name="empirical-rf",
            help="the receptive field a channel actually uses, averaged over images",
            description="Empirical receptive field (Zhou et al. 2015): each image's upsampled "
            "activation map (--engine upsample) or occlusion map (--engine occlusion) is cut out "
            "over the theoretical field of the image's best unit, and the cut-outs are averaged. "
            "Writes empirical_rf.npy (R, R), empirical_rf.json (the size estimate in pixels "
            "next to the theoretical size) and empirical_rf.png.",
            example=f"{PROG} empirical-rf images/ --model alexnet --weights alexnet.pth "
            "--layer conv5 --channel 121 --engine upsample --threshold 0.5 --out erf/",
            add_arguments=_add_empirical_rf,
            run=_run_empirical_rf,
        )
    )


# ----------------------------------------------------------------------------- demo


@dataclass
class DemoPanel:
    """One panel of ``index.html``: a title, a one-line explanation, its figures."""

    title: str
    explanation: str
    command: str
    files: list[str]
    seconds: float = 0.0


def _add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results already in DIR"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    parser.add_argument(
        "--n-images", type=int, default=3, metavar="N", help="number of sample digits (1-8)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller settings (fewer synthesis steps, noise samples and images), for tests",
    )
    parser.set_defaults(
        model="digits", weights=None, layer=None, image_size=None, device="cpu", digits=None
    )


def _demo_channel(ctx: RunContext, layer: str) -> int:
    """The channel of ``layer`` most active, on average, on the sample digits."""
    from dnnbrain_captum._utils.hooks import run_to_layer

    assert ctx.images is not None
    with torch.no_grad():
        output = run_to_layer(ctx.model, _resolve_layer(ctx.model, layer), (ctx.images,))
    return int(output.mean(dim=(0, 2, 3)).argmax())


PanelSpec = tuple[str, str, str, Callable[[], list[str]]]


def _demo_panels(ctx: RunContext, n: int) -> Iterator[PanelSpec]:
    """(title, explanation, equivalent command, make-figures) for every available algorithm."""
    from dnnbrain_captum.visualization import (
        activation_map_figure,
        occlusion_figure,
        saliency_figure,
    )

    assert ctx.images is not None and ctx.display is not None
    images, display, model = ctx.images, ctx.display, ctx.model
    with torch.no_grad():
        classes = model(images).argmax(dim=1).tolist()
    conv5 = _resolve_layer(model, "conv5")
    c5 = _demo_channel(ctx, "conv5")
    base = f"{PROG} {{}} --digits {n}"

    def per_image(stem: str, make: Callable[[int], Any]) -> list[str]:
        names = []
        for k in range(n):
            name = f"{stem}_{k}.png"
            ctx.save_figure(name, make(k))
            names.append(name)
        return names

    def vanilla() -> list[str]:
        grads = saliency_arrays(model, None, images, classes)
        return per_image(
            "saliency_vanilla",
            lambda k: saliency_figure(grads[k], display[k], title=f"class {classes[k]}"),
        )

    yield (
        "Vanilla saliency",
        "Gradient of the predicted class's logit with respect to each pixel (absolute value, "
        "summed over colour): the pixels whose change moves the decision most.",
        base.format("saliency") + " --out saliency/",
        vanilla,
    )

    def guided() -> list[str]:
        grads = saliency_arrays(model, conv5, images, c5, method="guided")
        return per_image(
            "saliency_guided",
            lambda k: saliency_figure(grads[k], display[k], title=f"conv5 channel {c5}"),
        )

    yield (
        f"Guided saliency, conv5 channel {c5}",
        "Guided backpropagation of one conv5 channel's mean activation: only positive "
        "evidence flows back, giving sharper edges than the vanilla gradient.",
        base.format("saliency") + f" --method guided --layer conv5 --channel {c5} --out guided/",
        guided,
    )

    def smooth() -> list[str]:
        grads = saliency_arrays(
            model, None, images, classes, smooth=ctx.record["demo_smooth"], sigma_multiplier=0.1
        )
        return per_image(
            "saliency_smoothgrad",
            lambda k: saliency_figure(
                grads[k], display[k], title=f"SmoothGrad, class {classes[k]}"
            ),
        )

    yield (
        "SmoothGrad",
        f"The vanilla gradient averaged over {ctx.record['demo_smooth']} noisy copies of the "
        "image (noise std 0.1 x the "
        "image's range, DNNBrain's setting), which removes most of the speckle.",
        base.format("saliency")
        + f" --smooth {ctx.record['demo_smooth']} --sigma-multiplier 0.1 --out smoothgrad/",
        smooth,
    )

    def upsample() -> list[str]:
        from dnnbrain_captum.attr import UpsamplingActivationMapping

        maps = UpsamplingActivationMapping(model, conv5).attribute(images, target=c5)
        return per_image(
            "upsample",
            lambda k: activation_map_figure(maps[k], display[k], title=f"conv5 channel {c5}"),
        )

    yield (
        f"Upsampled activation map, conv5 channel {c5}",
        "The 8x8 map of one conv5 channel interpolated (bicubic) to the 32x32 image: where "
        "in the image this unit responds.",
        base.format("upsample") + f" --layer conv5 --channel {c5} --out upsample/",
        upsample,
    )

    def occlusion() -> list[str]:
        from dnnbrain_captum.attr import OccluderDiscrepancyMapping

        grid = OccluderDiscrepancyMapping(model).attribute(
            images, target=classes, sliding_window_shapes=(8, 8), strides=(2, 2)
        )
        return per_image(
            "occlusion",
            lambda k: occlusion_figure(
                grid[k], display[k], (8, 8), (2, 2), title=f"class {classes[k]}"
            ),
        )

    yield (
        "Occlusion",
        "An 8x8 black square slides over the image in steps of 2 pixels; red marks where "
        "covering the image lowers the predicted class's logit most.",
        base.format("occlusion") + " --window 8 --stride 2 --out occlusion/",
        occlusion,
    )
    yield from _demo_extra_panels(ctx, n, c5, base)


def _available(module: str) -> bool:
    """Whether an algorithm module is part of this installation."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _demo_extra_panels(ctx: RunContext, n: int, c5: int, base: str) -> Iterator[PanelSpec]:
    """Panels of the receptive-field, synthesis, masked and minimal-image algorithms."""
    from dnnbrain_captum.visualization import receptive_field_figure

    assert ctx.images is not None and ctx.display is not None
    model, display = ctx.model, ctx.display

    def theoretical() -> list[str]:
        from dnnbrain_captum.receptive_field import TheoreticalReceptiveField

        analysis = TheoreticalReceptiveField(model, (3, *ctx.image_size))
        layers = ("conv1", "conv3", "conv5")
        regions = [analysis.find_region(name, (4, 4) if name != "conv1" else (16, 16))
                   for name in layers]
        labels = [f"{name}: {analysis[name].size[0]} px" for name in layers]
        ctx.save_figure("rf_theoretical.png", receptive_field_figure(display[0], regions, labels))
        return ["rf_theoretical.png"]

    if _available("dnnbrain_captum.optim"):

        def synthesis() -> list[str]:
            from dnnbrain_captum.optim import SynthesisImage, random_images
            from dnnbrain_captum.visualization import synthesis_grid

            classes = list(range(10))
            result = SynthesisImage(model).attribute(
                random_images(10, ctx.image_size), target=classes,
                n_iter=ctx.record["demo_steps"],
                return_history=True,
            )
            titles = [f"class {c}: {v:.0f}" for c, v in
                      zip(classes, result.activation[:, -1].tolist(), strict=True)]
            fig = synthesis_grid(result.images.detach().clamp(0, 1), titles, ncols=5)
            ctx.save_figure("synthesis.png", fig)
            return ["synthesis.png"]

        yield (
            "Synthesised images (activation maximisation)",
            "For each digit class, an image optimised from grey to maximise the class logit "
            "(Fourier parametrisation, random jitter/scale/rotation, "
            f"{ctx.record['demo_steps']} Adam steps); the "
            "title gives the logit reached.",
            f"{PROG} synthesize --channel 0-9 --n-iter {ctx.record['demo_steps']} "
            "--out synthesis/",
            synthesis,
        )

    from dnnbrain_captum.visualization import minimal_image_figure

    with torch.no_grad():
        classes = model(ctx.images).argmax(dim=1).tolist()

    if "mask" in SUBCOMMANDS:

        def masked() -> list[str]:
            from dnnbrain_captum.attr.masked import MaskedImage

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = MaskedImage(model).attribute(
                    ctx.images, target=classes, return_masks=True
                )
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k], result.images[k].clamp(0, 1), result.masks[k, 0],
                    ("original", f"masked, class {classes[k]}", "mask"),
                )
                names.append(f"mask_{k}.png")
                ctx.save_figure(names[-1], fig)
            return names

        yield (
            "Masked image (tight mask)",
            "The convex hull of the digit's high-contrast pixels, blurred and eroded until the "
            "predicted class's logit falls to 90 % of its value on the hull image (Walker et "
            "al. 2019).",
            base.format("mask") + " --out mask/",
            masked,
        )

    if "minimal" in SUBCOMMANDS:

        def minimal_parcels() -> list[str]:
            from dnnbrain_captum.attr.minimal import MinimalParcelImage

            result = MinimalParcelImage(model).attribute(
                ctx.images, target=classes, segmentation="slic",
                segmentation_kwargs={"n_segments": 30}, search_criterion="removal",
            )
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k], result.images[k].clamp(0, 1), result.masks[k].float(),
                    ("original", f"{int(result.n_selected[k])} of {int(result.n_parcels[k])} "
                     "parcels", "kept pixels"),
                )
                names.append(f"minimal_parcels_{k}.png")
                ctx.save_figure(names[-1], fig)
            return names

        yield (
            "Minimal image (superpixels)",
            "The digit cut into about 30 SLIC superpixels; superpixels are removed (set to "
            "black) as long as the predicted class keeps 90 % of its logit.",
            base.format("minimal") + " --method slic --segment n_segments=30 --search removal "
            "--out minimal/",
            minimal_parcels,
        )

        def minimal_components() -> list[str]:
            from dnnbrain_captum.attr.minimal_component import MinimalComponentImage

            result = MinimalComponentImage(model).attribute(
                ctx.images, target=classes, decomposition="pca", patch_size=4,
                search_criterion="threshold",
            )
            total = int(result.selected.shape[1])
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k], result.images[k].clamp(0, 1), None,
                    ("original", f"{int(result.n_selected[k])} of {total} PCA components"),
                )
                names.append(f"minimal_components_{k}.png")
                ctx.save_figure(names[-1], fig)
            return names

        yield (
            "Minimal image (PCA components)",
            "The digit rebuilt from the fewest principal components of its 4x4 tiles, "
            "ranked by the logit each one alone gives, that keep 90 % of the class logit.",
            base.format("minimal") + " --method pca --patch-size 4 --search threshold "
            "--out minimal_pca/",
            minimal_components,
        )

    if "empirical-rf" in SUBCOMMANDS:
        c3 = _demo_channel(ctx, "conv3")

        def empirical() -> list[str]:
            from dnnbrain_captum.attr import UpsamplingActivationMapping
            from dnnbrain_captum.models import digits_images
            from dnnbrain_captum.receptive_field import EmpiricalReceptiveField
            from dnnbrain_captum.visualization import empirical_rf_figure

            many, _ = digits_images(n=ctx.record["demo_rf_images"])
            measure = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv3"))
            result = measure.attribute(many.to(ctx.device), target=c3)
            theory = measure.theoretical((3, *ctx.image_size)).size
            fig = empirical_rf_figure(
                result.map, result.size.tolist(),
                title=f"conv3 channel {c3}, {many.shape[0]} digits (theoretical {theory[0]} px)",
            )
            ctx.save_figure("rf_empirical.png", fig)
            return ["rf_empirical.png"]

        yield (
            "Empirical receptive field",
            f"The upsampled map of one conv3 channel on {ctx.record['demo_rf_images']} digits, "
            "each cut out over the "
            "theoretical field of the image's most active unit and averaged: the part of the "
            "field the channel actually uses (dashed: half-maximum extent).",
            f"{PROG} empirical-rf --digits {ctx.record['demo_rf_images']} --layer conv3 "
            f"--channel {c3} --out erf/",
            empirical,
        )

    yield (
        "Theoretical receptive fields",
        "The pixels one unit in the middle of conv1, conv3 and conv5 can see, from the "
        "network's computation graph (fields grow with depth; conv5's covers the digit).",
        f"{PROG} rf --digits 1 --layer conv5 --unit 4 4 --out rf/",
        theoretical,
    )


def _write_index(
    out: Path, panels: list[DemoPanel], seconds: float, n: int, accuracy: float
) -> None:
    from dnnbrain_captum import __version__

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>dnnbrain_captum demo</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "img{height:210px;margin:4px;border:1px solid #ddd}code{background:#f4f4f4;"
        "padding:1px 4px}section{margin-bottom:2em}</style></head><body>",
        "<h1>dnnbrain_captum demo</h1>",
        f"<p>Every algorithm of dnnbrain_captum {html.escape(__version__)} on the bundled "
        f"digits CNN ({accuracy:.1%} accuracy on the 360 held-out digits) and {n} of those "
        f"digits; {seconds:.1f} s in all. "
        "Channels are 0-based. Each panel gives the command that computes it on your own "
        "images and model.</p>",
    ]
    for panel in panels:
        parts.append("<section>")
        parts.append(f"<h2>{html.escape(panel.title)}</h2>")
        parts.append(f"<p>{html.escape(panel.explanation)}</p>")
        parts.append(f"<p><code>{html.escape(panel.command)}</code></p>")
        parts.append("<div>")
        for name in panel.files:
            alt = html.escape(f"{panel.title}: {name}")
            parts.append(f'<img src="{html.escape(name)}" alt="{alt}">')
        parts.append("</div></section>")
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts) + "\n", encoding="utf-8")


def _run_demo(args: argparse.Namespace, ctx: RunContext) -> None:
    from tqdm.auto import tqdm

    from dnnbrain_captum.models import digits_images

    n = args.n_images
    if not 1 <= n <= 8:
        raise CLIError(f"--n-images must lie in 1..8, got {n}")
    started = time.perf_counter()
    ctx.record["demo_smooth"] = 4 if args.quick else 16
    ctx.record["demo_steps"] = 8 if args.quick else 48
    ctx.record["demo_rf_images"] = 16 if args.quick else 64
    images, labels = digits_images(n=n)
    ctx.images, ctx.display = images.to(ctx.device), images
    ctx.names = [f"digit{k}" for k in range(n)]
    ctx.sources = [f"digits:test[{k}] (label {int(labels[k])})" for k in range(n)]
    panels: list[DemoPanel] = []
    specs = list(_demo_panels(ctx, n))
    for title, explanation, command, make in tqdm(
        specs, desc="demo", unit="panel", disable=not ctx.progress, file=sys.stderr
    ):
        begin = time.perf_counter()
        files = make()
        panels.append(DemoPanel(title, explanation, command, files, time.perf_counter() - begin))
    held_out, held_out_labels = digits_images()
    with torch.no_grad():
        predicted = ctx.model(held_out.to(ctx.device)).argmax(dim=1).cpu()
    accuracy = float((predicted == held_out_labels).float().mean())
    ctx.record["accuracy"] = accuracy
    seconds = time.perf_counter() - started
    _write_index(ctx.out, panels, seconds, n, accuracy)
    ctx.files.append("index.html")
    ctx.record["panels"] = [
        {"title": p.title, "files": p.files, "seconds": round(p.seconds, 3)} for p in panels
    ]


_register(
    Subcommand(
        name="demo",
        help="every algorithm on the bundled model and sample digits; writes DIR/index.html",
        description="Runs every algorithm of the package on the bundled digits CNN and a few "
        "held-out digits, and writes DIR/index.html with one panel per algorithm (PNG figures "
        "beside it). No download, no GPU; well under two minutes on two CPU cores.",
        example=f"{PROG} demo --out demo/ && open demo/index.html",
        add_arguments=_add_demo,
        run=_run_demo,
        needs_images=False,
        needs_layer=False,
        takes_images=False,
    )
)


# ----------------------------------------------------------------------------- streaming

RUN_MANIFEST = "manifest.json"  # written by dnnbrain_captum.run_over
RUN_RESULT = "result.npy"
RUN_CHUNKS = "chunks"
RUN_PARTIAL = ("result.partial.npy", "result.partial.done")  # a run being filled in place
PREDICTED = "predicted_classes"  # sub-folder: a run_over folder of each image's predicted class
STREAM_FIGURES = 16


def _stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "streaming (large image sets)",
        textwrap.fill(
            "With a folder among the IMAGE arguments (or --stream) the images are read batch "
            "by batch and the results are written by dnnbrain_captum.run_over into DIR: "
            "DIR/result.npy + DIR/manifest.json. Rerunning the same command resumes; a "
            "different command into the same DIR is refused (see docs/cli.md).",
            78,
        ),
    )
    group.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream the images through the runner (default: on when an IMAGE argument is a "
        "folder); --no-stream loads every image into memory and writes one NAME.npy",
    )
    group.add_argument(
        "--max-figures",
        type=int,
        default=STREAM_FIGURES,
        metavar="N",
        help="streamed runs: draw figures for the first N images only",
    )
    group.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="streamed runs: skip unreadable images (their rows are NaN, each is named in a "
        "note and in the manifest) instead of stopping at the first one",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="K",
        help="streamed runs: image-loading worker processes (default: 0, load in this process)",
    )


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


# ----------------------------------------------------------------------------- driver


def _make_context(
    args: argparse.Namespace, command: Subcommand, load_images: bool = True
) -> RunContext:
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown --device {args.device!r}") from None
    model = load_model(args.model, args.weights)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise CLIError(f"--device {args.device}: {_one_line(err)}") from None
    layer = _resolve_layer(model, args.layer)
    if command.needs_layer and layer is None:
        from dnnbrain_captum._utils.layers import layer_names

        names = ", ".join(layer_names(model)[-6:])
        raise CLIError(f"{command.name} needs --layer (a module path or alias, e.g. {names})")
    size = _image_size(args, args.model)
    kind = args.model if args.model == "digits" else "imagenet"
    normalize = _normalizer(kind)
    stats = _normalization(kind)
    ctx = RunContext(
        model=model,
        model_name=args.model,
        device=device,
        layer=layer,
        layer_name=args.layer,
        image_size=size,
        normalize=normalize,
        mean=None if stats is None else stats[0],
        std=None if stats is None else stats[1],
        figures=not getattr(args, "no_figures", False),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if command.takes_images and load_images:
        images, display, sources, names = _load_images(args, size, normalize)
        if command.needs_images and images.shape[0] == 0:
            raise CLIError(f"{command.name} needs images: give files or folders, or --digits N")
        if images.shape[0] > 0:
            ctx.images = images.to(device)
            ctx.display = display
            ctx.sources, ctx.names = sources, names
    channel = getattr(args, "channel", None)
    if channel is not None:
        _check_channels(ctx, channel if isinstance(channel, list) else [channel])
    unit = getattr(args, "unit", None)
    if unit is not None:
        _check_unit(ctx, unit)
    return ctx


def _arguments_record(args: argparse.Namespace) -> dict[str, Any]:
    record = {}
    for key, value in vars(args).items():
        if key.startswith("_"):
            continue
        if isinstance(value, Path):
            value = str(value)
        record[key] = value
    return record


def _run(args: argparse.Namespace) -> None:
    command = SUBCOMMANDS[args.command]
    if _streaming(args):
        _run_streamed(args, command)
        return
    if getattr(args, "skip_unreadable", False):
        raise CLIError("--skip-unreadable applies to streamed runs (a folder of images, or "
                       "--stream)")
    out = Path(args.out)
    if _occupied(out) and not args.overwrite:
        raise CLIError(
            f"--out {out} already holds results; pass --overwrite to replace them or choose "
            "another folder"
        )
    ctx = _make_context(args, command)
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
                "arguments": _arguments_record(args),
                "model": args.model,
                "layer": args.layer,
                "images": ctx.sources,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        files = sorted(set(ctx.files))
        ctx.record["files"] = files + [MANIFEST]
        (staging / MANIFEST).write_text(json.dumps(ctx.record, indent=2) + "\n", "utf-8")
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
            sys.stderr.write(f"{PROG} {args.command}: interrupted; the completed chunks are kept "
                             f"in {streamed}: rerun the same command to resume\n")
            raise SystemExit(130) from None
        sys.stderr.write(f"{PROG} {args.command}: interrupted, nothing written\n")
        raise SystemExit(130) from None
    return 0


def _fail(command: str, message: str) -> NoReturn:
    sys.stderr.write(f"{PROG} {command}: error: {_one_line(message)}\n")
    raise SystemExit(2)


if __name__ == "__main__":  # pragma: no cover - python -m dnnbrain_captum.cli
    raise SystemExit(main())
