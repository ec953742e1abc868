"""Shared plumbing of the ``dnnbrain-captum`` command: argument parsing helpers, the
subcommand registry, model/weights/layer/channel resolution, image loading and one-line
errors (the output folder: ``_outdir``)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

PROG = "dnnbrain-captum"
FIGURE_FORMATS = ("png", "svg", "pdf")
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
        text = str(err)
        if "Weights only load failed" in text and ("GLOBAL" in text or "global" in text):
            raise CLIError(
                f"weights file {path} holds a whole pickled model, not a state dict: in Python, "
                "load it and save torch.save(model.state_dict(), 'weights.pt'), then pass that"
            ) from None
        first = _one_line(text.split(". ")[0])[:200]
        raise CLIError(f"cannot read weights file {path} ({type(err).__name__}: {first})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"weights file {path} does not hold a state dict of tensors")
    if state and all(str(key).startswith("module.") for key in state):
        # saved from DistributedDataParallel / DataParallel
        state = {str(key)[len("module.") :]: value for key, value in state.items()}
    return state


def _apply_weights_file(model: nn.Module, path: Path) -> None:
    state = _load_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
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


def load_model(name: str, weights: str | None = None, seed: int = 0) -> nn.Module:
    """The model named on the command line, in eval mode.

    Parameters
    ----------
    name : str
        ``"digits"``, a torchvision classification model name, or ``"package.module:factory"``
        (a function called with no argument that returns an ``nn.Module``).
    weights : str, optional
        A state-dict file, or a torchvision weight name already in the torch hub cache.
    seed : int
        Seed of the random initial weights (the model is built with this seed, in a forked
        RNG state: the caller's random state is untouched), so a model without ``weights`` is
        the same on every run.

    Returns
    -------
    nn.Module

    Raises
    ------
    CLIError
        For an unknown model, a factory that cannot be imported, unusable weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_model(name, weights)


def _build_model(name: str, weights: str | None) -> nn.Module:
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
            module = _import_from_cwd(module_name)
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


def _import_from_cwd(module_name: str) -> Any:
    """Import ``module_name`` with the current folder on ``sys.path`` (as ``python -m``)."""
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


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
    geometry: Any = None  # io.Preprocess: resize the shorter side + centre crop (no statistics)
    figure_format: str = "png"
    dpi: int = 100

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
        """Write a matplotlib figure (``--format``, ``--dpi``) unless ``--no-figures``.

        ``name`` may end in ``.png``: the extension follows ``--format``."""
        from dnnbrain_captum.visualization import save_figure

        if not self.figures:
            return None
        name = f"{Path(name).stem}.{self.figure_format}"
        path = self.out / name
        save_figure(fig, path, dpi=self.dpi)
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
        """``003_cat_saliency.png`` for image 3 named cat.jpg (extension: ``--format``)."""
        return f"{index:03d}_{self.names[index]}_{suffix}.{self.figure_format}"


def _safe_stem(path: Path) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return keep[:60] or "image"


def _preprocessing(args: argparse.Namespace, model: nn.Module, entry: Any) -> Any:
    """The model's preprocessing (io.Preprocess): --image-size, else the model's own."""
    from dnnbrain_captum.io import Preprocess, preprocessing_for

    name = args.model
    try:
        step = preprocessing_for(model if ":" in name else name, weights=entry)
    except ValueError as err:
        raise CLIError(_one_line(err)) from None
    if args.image_size is not None:
        if args.image_size < 1:
            raise CLIError(f"--image-size must be >= 1, got {args.image_size}")
        step = Preprocess(size=args.image_size, crop=args.image_size, mean=step.mean,
                          std=step.std)
    return step


def _load_images(
    args: argparse.Namespace, geometry: Any, normalize: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, list[str], list[str]]:
    size = _crop_size(geometry)
    from dnnbrain_captum.io import find_images, load_image

    resize = geometry
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


def _crop_size(geometry: Any) -> tuple[int, int]:
    crop = geometry.crop if geometry.crop is not None else geometry.size
    return (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))


def _normalizer(step: Any) -> Callable[[Tensor], Tensor]:
    if step.mean is None or step.std is None:
        return lambda x: x
    mean = torch.tensor(step.mean).view(1, -1, 1, 1)
    std = torch.tensor(step.std).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def _weights_entry(name: str, weights: str | None) -> Any:
    """The torchvision weights entry named by --weights (None for files and other models)."""
    if name == "digits" or ":" in name or weights is None or Path(weights).exists():
        return None
    return _torchvision_weights(name, weights)


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
    from dnnbrain_captum._utils.targets import layer_output

    if ctx.images is not None and ctx.images.shape[0] > 0:
        probe = ctx.images[:1]
    else:
        probe = torch.zeros(1, 3, *ctx.image_size, device=ctx.device)
    with torch.no_grad():
        try:  # the layer's output channels-first (ViT tokens on their grid, NHWC permuted)
            if ctx.layer is None:
                output = run_to_layer(ctx.model, None, (probe,))
            else:
                output = layer_output(ctx.model, ctx.layer, (probe,))
        except ValueError as err:
            raise CLIError(_one_line(err)) from None
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
    """Whether a module exists, without importing it."""
    import importlib.util

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


def _make_context(
    args: argparse.Namespace, command: Subcommand, load_images: bool = True
) -> RunContext:
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown --device {args.device!r}") from None
    seed = getattr(args, "seed", 0)
    model = load_model(args.model, args.weights, seed=seed)
    entry = _weights_entry(args.model, args.weights)
    random_weights = args.model != "digits" and args.weights is None
    if random_weights and not args.quiet:
        sys.stderr.write(
            f"{PROG} {args.command}: note: {args.model} has random weights (seeded with --seed "
            f"{seed}); pass --weights for trained ones\n"
        )
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise CLIError(f"--device {args.device}: {_one_line(err)}") from None
    layer = _resolve_layer(model, args.layer)
    if command.needs_layer and layer is None:
        from dnnbrain_captum._utils.layers import layer_names

        names = ", ".join(layer_names(model)[-6:])
        raise CLIError(f"{command.name} needs --layer (a module path or alias, e.g. {names})")
    step = _preprocessing(args, model, entry)
    geometry = type(step)(size=step.size, crop=step.crop)
    size = _crop_size(step)
    normalize = _normalizer(step)
    ctx = RunContext(
        model=model,
        model_name=args.model,
        device=device,
        layer=layer,
        layer_name=args.layer,
        image_size=size,
        normalize=normalize,
        mean=step.mean,
        std=step.std,
        figures=not getattr(args, "no_figures", False),
        progress=not args.quiet and sys.stderr.isatty(),
        geometry=geometry,
        figure_format=getattr(args, "format", "png"),
        dpi=_positive(getattr(args, "dpi", 100), "--dpi"),
    )
    ctx.record["preprocessing"] = {
        "resize_shorter_side": step.size, "center_crop": step.crop,
        "mean": step.mean, "std": step.std,
    }
    if random_weights:
        ctx.record["random_weights_seed"] = seed
    from dnnbrain_captum.io import class_names

    categories = class_names(entry)
    if categories is not None:
        ctx.record["class_names"] = categories
    if command.takes_images and load_images:
        images, display, sources, names = _load_images(args, geometry, normalize)
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
