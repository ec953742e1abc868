"""``build_atlas``: every selected channel of some layers, characterised over a stimulus set."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from dnnbrain_captum._utils.layouts import ReshapeTransform
from dnnbrain_captum._utils.validation import positive_int
from dnnbrain_captum.atlas._activations import ChannelActivations, rank_stimuli
from dnnbrain_captum.atlas._files import AtlasFolder, Ranks
from dnnbrain_captum.atlas._occlusion import ChannelOcclusion, shared_sweep
from dnnbrain_captum.atlas._pieces import (
    EmpiricalPerChannel,
    MinimalImages,
    Picked,
    Stacked,
)
from dnnbrain_captum.atlas._plans import LayerPlan, transform_names
from dnnbrain_captum.atlas._prepare import atlas_request, plan_stimuli
from dnnbrain_captum.attr.occlusion import OccluderDiscrepancyMapping
from dnnbrain_captum.attr.upsampling import UpsamplingActivationMapping
from dnnbrain_captum.optim.synthesis import SynthesisImage, random_images
from dnnbrain_captum.receptive_field.empirical import EmpiricalReceptiveField
from dnnbrain_captum.runner import read_results, run_over

__all__ = ["AtlasSummary", "build_atlas"]

#: Synthesis settings of the atlas unless overridden (``synthesis=``): the default preset, fewer
#: steps (a thumbnail per channel, not a poster).
SYNTHESIS_DEFAULTS: dict[str, Any] = {"n_iter": 64}


@dataclass
class AtlasSummary:
    """What :func:`build_atlas` produced (seen from one process).

    Attributes
    ----------
    out : Path
        The atlas folder; ``out / "index.html"`` is its first page.
    n_stimuli : int
    channels : dict of str to list of int
        The selected channels of each layer.
    seconds : float
        Wall time of the call.
    rank, world_size : int
    """

    out: Path
    n_stimuli: int
    channels: dict[str, list[int]]
    seconds: float
    rank: int = 0
    world_size: int = 1

    @property
    def index(self) -> Path:
        """The atlas's first page."""
        return self.out / "index.html"


def build_atlas(
    model: nn.Module,
    layers: Sequence[nn.Module | str] | nn.Module | str,
    stimuli: Tensor | Any,
    out: str | os.PathLike[str],
    *,
    channels: str | Sequence[int] | Mapping[str, Any] | None = None,
    top_k: int = 9,
    ids: Sequence[Any] | None = None,
    reduction: str = "mean",
    n_syntheses: int = 3,
    synthesis: Mapping[str, Any] | None = None,
    occlusion: Mapping[str, Any] | None = None,
    minimal: Mapping[str, Any] | None = None,
    interpolate_mode: str = "bilinear",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    show_progress: bool = False,
    reshape_transform: ReshapeTransform | Mapping[str, ReshapeTransform] | None = None,
) -> AtlasSummary:
    """Characterise every selected channel of ``layers`` over ``stimuli``; write a static site.

    Parameters
    ----------
    model : nn.Module
        The model (left as it was).
    layers : layer or sequence of layers
        Modules, dotted paths or DNNBrain aliases whose outputs are channels on a grid:
        (N, C, H, W), or a layout the package establishes and reads as (N, C, H, W), as every
        attribution class does (channels-last ``(N, H, W, C)`` outputs of Swin, MaxViT and
        ConvNeXt layers; ViT blocks' ``(N, 1 + H * W, D)`` tokens), or any output mapped by
        ``reshape_transform``. Other layers are refused, naming the shape and the way out.
    stimuli : Tensor (N, C, H, W), Dataset or DataLoader
        Model-ready images (as for :func:`dnnbrain_captum.run_over`).
    out : path
        The atlas folder (created; an existing one is resumed if it holds the same atlas).
    channels : str, sequence of int or mapping, optional
        Channels of every layer (``"0-7,12"`` or a list), or ``{layer name: channels}``;
        default all.
    top_k : int
        Stimuli kept per channel at the top (and at the bottom).
    ids : sequence, optional
        Stimulus ids (default: the data set's ``ids``, else "0", "1", ...).
    reduction : {"mean", "max", "sum"}
        How a channel map becomes one activation (DNNBrain: mean).
    n_syntheses : int
        Syntheses per channel (``SynthesisImage``, different random starts).
    synthesis, occlusion, minimal : mapping, optional
        Keyword arguments of ``SynthesisImage.attribute`` (default ``n_iter=64``; with
        ``diversity=λ`` each channel's syntheses run as one batch of their own),
        ``OccluderDiscrepancyMapping.attribute`` (default: windows a quarter of the image wide,
        strides half a window) and ``MinimalParcelImage.attribute``. With a constant
        occluder and no ``method``, every selected channel's maps come from one occlusion
        sweep per distinct top stimulus (equal to the class's maps up to float rounding);
        other occlusion settings run the class once per channel and top stimulus.
    interpolate_mode : str
        Of the upsampled activation maps (and of the empirical receptive field).
    mean, std : sequence of float, optional
        The model's input normalisation, for the syntheses and to display images.
    batch_size : int
        Items per batch and per runner chunk.
    seed : int
        Seeds the syntheses' starts and the runner's chunks.
    overwrite : bool
        Replace an atlas built with other settings in ``out`` (only its own files go).
    show_progress : bool
        Progress bars.
    reshape_transform : callable or mapping of str to callable, optional
        ``f(layer output) -> (N, C, H, W)`` for every layer, or per layer name, given to every
        class of the atlas (as their own ``reshape_transform``); the settings record its
        ``__qualname__``.

    Returns
    -------
    AtlasSummary

    Notes
    -----
    Layout of ``out``: ``index.html``, ``<layer>/<channel>.html`` and their pictures,
    ``stimuli/<index>.png``, ``atlas.json`` (every number of the pages), ``runs/`` (the
    runner folders of every piece, read with :func:`dnnbrain_captum.read_results`),
    ``atlas-manifest.json`` (the settings) and ``atlas-files.txt`` (every file the atlas
    wrote; nothing else in ``out`` is ever replaced or removed). Under ``torchrun`` every rank
    calls this function with the same arguments: the stimuli pass is split over stimuli, every
    piece over channels, and rank 0 writes the site; the result equals one process's.

    Examples
    --------
    >>> import tempfile
    >>> from dnnbrain_captum import digits_cnn, digits_images
    >>> images, _ = digits_images(n=12)
    >>> summary = build_atlas(digits_cnn(), ["conv5"], images, tempfile.mkdtemp(),
    ...                       channels="0-1", top_k=3, n_syntheses=1, synthesis={"n_iter": 2})
    >>> summary.index.is_file(), summary.channels
    (True, {'conv5': [0, 1]})
    """
    started = time.perf_counter()
    top_k = positive_int(top_k, "top_k")
    n_syntheses = positive_int(n_syntheses, "n_syntheses")
    batch_size = positive_int(batch_size, "batch_size")
    data, n, example, plans, activations = plan_stimuli(
        model, layers, stimuli, channels, reduction, reshape_transform, top_k
    )
    settings = _settings(
        tuple(example.shape[-2:]),
        top_k,
        reduction,
        n_syntheses,
        synthesis,
        occlusion,
        minimal,
        interpolate_mode,
        mean,
        std,
        batch_size,
        seed,
    )
    settings["reshape_transform"] = transform_names(reshape_transform)
    request = atlas_request(model, n, plans, settings)
    folder = AtlasFolder(Path(out))
    ranks = Ranks()
    with ranks.session():
        _claim(folder, ranks, request, overwrite)
        values = _run_layers(
            model,
            plans,
            activations,
            stimuli,
            data,
            ids,
            folder,
            ranks.rank == 0,
            settings,
            show_progress,
            overwrite,
        )
        if ranks.rank == 0:
            _write_site(
                model, plans, activations, data, values, folder, settings, mean, std, show_progress
            )
    return AtlasSummary(
        folder.out,
        n,
        {p.name: p.channels for p in plans},
        time.perf_counter() - started,
        ranks.rank,
        ranks.world,
    )


def _run_layers(
    model: nn.Module,
    plans: Sequence[LayerPlan],
    activations: ChannelActivations,
    stimuli: Tensor | Any,
    data: Any,
    ids: Sequence[Any] | None,
    folder: AtlasFolder,
    writer: bool,
    settings: dict[str, Any],
    show_progress: bool,
    overwrite: bool,
) -> np.ndarray:
    """The activations run over every stimulus, then each layer's top/bottom stimuli and its
    per-channel pieces; returns the activations (n_stimuli, n_columns)."""
    common = {
        "batch_size": settings["batch_size"],
        "seed": settings["seed"],
        "show_progress": show_progress,
        "overwrite": overwrite,
    }
    run_over(
        activations,
        stimuli,
        out=folder.run_folder("activations", writer),
        ids=ids,
        **common,
    )
    values = np.asarray(read_results(folder.out / "runs" / "activations"))
    for plan in plans:
        columns = values[:, plan.offset + np.asarray(plan.channels)]
        plan.top, plan.bottom = rank_stimuli(columns, settings["top_k"])
        _run_pieces(model, plan, data, folder, writer, settings, common)
    return values


def _write_site(
    model: nn.Module,
    plans: Sequence[LayerPlan],
    activations: ChannelActivations,
    data: Any,
    values: np.ndarray,
    folder: AtlasFolder,
    settings: dict[str, Any],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    show_progress: bool,
) -> None:
    """Rank 0's last step: the pages of the atlas, then the sealed list of its files."""
    from dnnbrain_captum.atlas._site import write_site

    write_site(
        model,
        plans,
        activations.last,
        data,
        values,
        folder,
        settings,
        mean,
        std,
        show_progress,
    )
    folder.seal()


def _settings(
    size: tuple[int, int],
    top_k: int,
    reduction: str,
    n_syntheses: int,
    synthesis: Mapping[str, Any] | None,
    occlusion: Mapping[str, Any] | None,
    minimal: Mapping[str, Any] | None,
    interpolate_mode: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Every setting of the atlas, defaults filled in (recorded, compared on a rerun)."""
    occlusion = dict(occlusion or {})
    window = _hw(
        occlusion.get("sliding_window_shapes", (max(1, size[0] // 4), max(1, size[1] // 4)))
    )
    occlusion["sliding_window_shapes"] = window
    h, w = tuple(window)[-2:]  # (h, w) or Captum's (C, h, w)
    occlusion["strides"] = _hw(occlusion.get("strides", (max(1, h // 2), max(1, w // 2))))
    synthesis = {**SYNTHESIS_DEFAULTS, **(synthesis or {})}
    if mean is not None:
        synthesis.setdefault("mean", list(mean))
        synthesis.setdefault("std", list(std) if std is not None else None)
    return {
        "top_k": top_k,
        "reduction": reduction,
        "n_syntheses": n_syntheses,
        "synthesis": synthesis,
        "occlusion": occlusion,
        "minimal": dict(minimal or {}),
        "interpolate_mode": interpolate_mode,
        "batch_size": batch_size,
        "seed": seed,
    }


def _hw(value: Any) -> Any:
    """An int occlusion window or stride as the square (h, w) it means; anything else as
    given (Captum's (C, h, w) form is checked by the class)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


def _synthesis_batch(synthesis: Mapping[str, Any], s: int, batch_size: int) -> int:
    """Syntheses per call: whole channels only; with the diversity objective (which couples
    every example of a call) exactly one channel's ``s`` syntheses, so that they are made
    diverse among themselves and not against other channels'."""
    if float(synthesis.get("diversity", 0.0) or 0.0) > 0:
        return s
    return s * max(1, batch_size // s)


def _claim(folder: AtlasFolder, ranks: Ranks, request: dict[str, Any], overwrite: bool) -> None:
    """Rank 0 checks and claims the folder; every rank raises if that failed."""
    error = None
    if ranks.rank == 0:
        try:
            folder.prepare(request, overwrite)
        except (ValueError, OSError) as err:
            error = err
    ranks.agree(error)


def _run_pieces(
    model: nn.Module,
    plan: LayerPlan,
    data: Any,
    folder: AtlasFolder,
    writer: bool,
    settings: dict[str, Any],
    common: dict[str, Any],
) -> None:
    """The per-channel runs of one layer: maps, occlusion, empirical RF, syntheses, minimal."""
    k, s = settings["top_k"], settings["n_syntheses"]
    layer, transform = plan.module, plan.transform
    per_top = [c for c in plan.channels for _ in range(k)]
    top = Picked(data, plan.top.reshape(-1).tolist())

    def run(piece: str, attribution: Any, items: Any, targets: Any, **kwargs: Any) -> None:
        out = folder.run_folder(f"{plan.folder}/{piece}", writer)
        run_over(attribution, items, targets=targets, out=out, **{**common, **kwargs})

    run(
        "maps",
        UpsamplingActivationMapping(model, layer, transform),
        top,
        per_top,
        interpolate_mode=settings["interpolate_mode"],
    )
    attribution, items, targets, kwargs = _occlusion_piece(
        model, plan, data, top, per_top, settings["occlusion"]
    )
    run("occlusion", attribution, items, targets, **kwargs)
    engine = UpsamplingActivationMapping(model, layer, transform)
    run(
        "empirical_rf",
        EmpiricalPerChannel(EmpiricalReceptiveField(engine)),
        Stacked(data, plan.top),
        list(plan.channels),
        interpolate_mode=settings["interpolate_mode"],
    )
    c, h, w = top[0].shape
    synthesis = settings["synthesis"]
    starts = random_images(
        len(plan.channels) * s,
        (h, w),
        c,
        seed=settings["seed"],
        mean=synthesis.get("mean"),
        std=synthesis.get("std"),
    )
    per_synthesis = [ch for ch in plan.channels for _ in range(s)]
    run(
        "syntheses",
        SynthesisImage(model, layer, transform),
        starts,
        per_synthesis,
        **{**synthesis, "batch_size": _synthesis_batch(synthesis, s, common["batch_size"])},
    )
    run(
        "minimal",
        MinimalImages(model, layer, transform),
        Picked(data, plan.top[:, 0].tolist()),
        list(plan.channels),
        **settings["minimal"],
    )


def _occlusion_piece(
    model: nn.Module,
    plan: LayerPlan,
    data: Any,
    top: Picked,
    per_top: list[int],
    occlusion: dict[str, Any],
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The occlusion run's attribution, items, targets and keyword arguments:
    one sweep per distinct top stimulus for every channel when the settings allow it, else the
    class once per channel and top stimulus."""
    if not shared_sweep(occlusion):
        attribution = OccluderDiscrepancyMapping(model, plan.module, plan.transform)
        return attribution, top, per_top, occlusion
    reduction = occlusion.get("reduction", "mean")
    evaluator = ChannelActivations(model, [plan.module], reduction, plan.transform)
    evaluator.probe(top[0][None])
    distinct = Picked(data, np.unique(plan.top).tolist())
    kwargs = {**occlusion, "reduction": evaluator.reduction}
    return ChannelOcclusion(evaluator, plan.channels), distinct, None, kwargs
