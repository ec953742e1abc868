"""Models, weights, preprocessing and layers for the ``dnnbrain-captum`` command: what
``--model``, ``--weights``, ``--seed``, ``--image-size``, ``--layer`` and ``--channel``
resolve to."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dnnbrain_captum.cli._args import CLIError, _one_line

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext


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
            raise CLIError(
                f"cannot import {module_name!r} for --model {name}: {_one_line(err)}"
            ) from None
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


def _preprocessing(args: argparse.Namespace, model: nn.Module, entry: Any) -> Any:
    """The model's preprocessing (io.Preprocess): --image-size, else the model's own."""
    from dnnbrain_captum.io import Preprocess, preprocessing_for

    name = args.model
    try:
        step = preprocessing_for(model if ":" in name else name, weights=entry)
    except ValueError as err:
        raise CLIError(_one_line(err)) from None
    side = args.image_size
    if side is not None and side < 1:
        raise CLIError(f"--image-size must be >= 1, got {side}")
    built = getattr(model, "image_size", None)  # torchvision ViTs take one input size only
    if side is None and isinstance(built, int) and entry is None and built != _crop_size(step)[0]:
        side = built  # random weights: the model is built for its own size, not its weights'
    if side is not None:
        step = Preprocess(side, side, step.mean, step.std, step.interpolation)
    return step


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
                f"--model {ctx.model_name} failed on a {tuple(probe.shape)} input: {_one_line(err)}"
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
