"""The torch-free half of the ``dnnbrain-captum`` command: the argument parser, the option
helpers and the subcommand registry. ``dnnbrain-captum --help`` imports only this (and the
subcommand modules' option definitions), never torch."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext

PROG = "dnnbrain-captum"
FIGURE_FORMATS = ("png", "svg", "pdf")


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


def _common_options(
    parser: argparse.ArgumentParser, images: bool = True, layers: bool = False
) -> None:
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
        action="append" if layers else "store",
        help="module path (features.10, layer4.1) or DNNBrain alias (conv5, conv5_relu, fc3)"
        + ("; repeat for several layers" if layers else ""),
    )
    model.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="model input size: the shorter side is resized to PX and the centre PX x PX kept "
        "(default: the model's own, e.g. 32 for digits, 224 for most torchvision models, 299 "
        "for inception_v3, following the torchvision weights' transforms)",
    )
    model.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of everything random: the weights of a model built without --weights, "
        "SmoothGrad noise, synthesis starts, FastICA",
    )
    model.add_argument("--device", default="cpu", help="torch device for the model and the images")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results already in DIR (by default a DIR holding files is refused)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    _figure_options(out)


def _figure_options(group: Any) -> None:
    group.add_argument("--no-figures", action="store_true", help="write only the arrays")
    group.add_argument(
        "--format", choices=FIGURE_FORMATS, default="png", help="file format of the figures"
    )
    group.add_argument("--dpi", type=int, default=100, help="resolution of the figures")


def _channel_option(
    parser: argparse.ArgumentParser, multiple: bool = False, layer_required: bool = False
) -> None:
    if layer_required and not multiple:
        parser.add_argument(
            "--channel",
            type=int,
            default=None,
            metavar="C",
            help="0-BASED channel of --layer, required (DNNBrain counted from 1)",
        )
    elif multiple:
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


def _occluder_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--window``, ``--stride``, ``--baseline``, ``--reduction`` and
    ``--perturbations-per-eval`` of an occlusion map (``occlusion``; ``empirical-rf`` with
    ``note="occlusion engine: "``)."""
    for flag, what, default in (
        ("--window", "occluder height [width]", "8 for digits, 11 otherwise"),
        ("--stride", "step height [width]", "2"),
    ):
        parser.add_argument(
            flag,
            type=_window,
            nargs="+",
            default=None,
            metavar="PX",
            help=f"{note}{what} in pixels (default: {default})",
        )
    parser.add_argument(
        "--baseline",
        default="0",
        help=f"{note}occluder value in model-input space, or 'noise' (uniform noise in the "
        "image's range, as Zhou et al. 2015)",
    )
    _reduction_option(parser)
    parser.add_argument(
        "--perturbations-per-eval",
        type=int,
        default=64,
        metavar="K",
        help=f"{note}occluded copies per forward pass",
    )


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
_ORDER = (
    "saliency",
    "occlusion",
    "upsample",
    "synthesize",
    "mask",
    "minimal",
    "rf",
    "empirical-rf",
    "demo",
)


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


def _baseline_value(text: str) -> float | str:
    if text == "noise":
        return "noise"
    try:
        return float(text)
    except ValueError:
        raise CLIError(f"--baseline must be a number or 'noise', got {text!r}") from None


def _unit_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--unit", type=int, nargs=2, default=None, metavar=("ROW", "COL"), help=help_text
    )


def _has_module(name: str) -> bool:
    """Whether a module exists, without importing it (nor, for this package's own modules,
    their parent packages, which import torch)."""
    import importlib.util

    package, _, rest = name.partition(".")
    if package == "dnnbrain_captum" and rest:
        root = Path(__file__).resolve().parents[1].joinpath(*rest.split("."))
        return root.with_suffix(".py").is_file() or (root / "__init__.py").is_file()
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


STREAM_FIGURES = 16


def _stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "streaming (large image sets)",
        textwrap.fill(
            "With a folder among the IMAGE arguments (or --stream) the images are read batch "
            "by batch and the results are written by dnnbrain_captum.run_over into DIR. The "
            "files are those of an in-memory run (DIR/result.npy, DIR/results.json, the "
            "figures) plus DIR/manifest.json, which lets the same command resume; a "
            "different command into the same DIR is refused (see docs/cli.md).",
            78,
        ),
    )
    group.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream the images through the runner (default: on when an IMAGE argument is a "
        "folder); --no-stream loads every image into memory (same files, no manifest.json)",
    )
    group.add_argument(
        "--max-figures",
        type=int,
        default=STREAM_FIGURES,
        metavar="N",
        help=f"draw figures for the first N images only (default: {STREAM_FIGURES})",
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
