"""The panels of ``dnnbrain-captum demo``: each algorithm on the bundled digits model, with the
command that computes it on the user's own images."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import PROG, SUBCOMMANDS
from dnnbrain_captum.cli.saliency import saliency_arrays

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext

PanelSpec = tuple[str, str, str, Callable[[], list[str]]]
"""(title, explanation, equivalent command, make-figures)."""

# Six conv3 units of the digits model, each at the middle of the 8 x 8 map (Walker et al.
# 2019 synthesise an image per unit, then mask it): the demo's synthesise-then-mask panel.
MEI_CHANNELS = (0, 5, 9, 14, 20, 33)
MEI_UNIT = (4, 4)
MEI_SEED = 2  # the random start images and the transforms; the command says --seed 2


def _demo_channel(ctx: RunContext, layer: str) -> int:
    """The channel of ``layer`` most active, on average, on the sample digits."""
    import torch

    from dnnbrain_captum._utils.hooks import run_to_layer
    from dnnbrain_captum.cli._common import _resolve_layer

    assert ctx.images is not None
    with torch.no_grad():
        output = run_to_layer(ctx.model, _resolve_layer(ctx.model, layer), (ctx.images,))
    return int(output.mean(dim=(0, 2, 3)).argmax())


def _per_image(ctx: RunContext, n: int, stem: str, make: Callable[[int], Any]) -> list[str]:
    """Save ``make(k)`` as ``STEM_k.png`` for the first ``n`` sample digits."""
    names = []
    for k in range(n):
        name = f"{stem}_{k}.png"
        ctx.save_figure(name, make(k))
        names.append(name)
    return names


def _minimal_figures(
    ctx: RunContext, n: int, stem: str, result: Any, middle: Callable[[int], str], kept: bool = True
) -> list[str]:
    """Original, minimal image (titled ``middle(k)``) and, with ``kept``, the kept pixels."""
    from dnnbrain_captum.visualization import minimal_image_figure

    assert ctx.display is not None
    display = ctx.display
    return _per_image(
        ctx,
        n,
        stem,
        lambda k: minimal_image_figure(
            display[k],
            result.images[k].clamp(0, 1),
            result.masks[k].float() if kept else None,
            ("original", middle(k), "kept pixels"),
        ),
    )


def demo_panels(ctx: RunContext, n: int) -> Iterator[PanelSpec]:
    """(title, explanation, equivalent command, make-figures) for every available algorithm."""
    import torch

    from dnnbrain_captum.cli._common import _resolve_layer

    assert ctx.images is not None and ctx.display is not None
    images, model = ctx.images, ctx.model
    with torch.no_grad():
        classes = model(images).argmax(dim=1).tolist()
    conv5 = _resolve_layer(model, "conv5")
    c5 = _demo_channel(ctx, "conv5")
    base = f"{PROG} {{}} --digits {n}"
    yield from _saliency_panels(ctx, n, classes, conv5, c5, base)
    yield _upsample_panel(ctx, n, conv5, c5, base)
    yield _occlusion_panel(ctx, n, classes, base)
    yield from _demo_extra_panels(ctx, n, c5, base)


def _saliency_panels(
    ctx: RunContext, n: int, classes: list[int], conv5: Any, c5: int, base: str
) -> Iterator[PanelSpec]:
    """The vanilla, guided (one conv5 channel) and SmoothGrad saliency panels."""
    from dnnbrain_captum.visualization import saliency_figure

    assert ctx.images is not None and ctx.display is not None
    images, display, model = ctx.images, ctx.display, ctx.model
    smooth = ctx.record["demo_smooth"]
    saliency_panels = (  # title, explanation, CLI options, stem, layer, target, title, options
        (
            "Vanilla saliency",
            "Gradient of the predicted class's logit with respect to each pixel (absolute "
            "value, summed over colour): the pixels whose change moves the decision most.",
            "",
            ("saliency_vanilla", None, classes, "class", {}),
        ),
        (
            f"Guided saliency, conv5 channel {c5}",
            "Guided backpropagation of one conv5 channel's mean activation: only positive "
            "evidence flows back, giving sharper edges than the vanilla gradient.",
            f" --method guided --layer conv5 --channel {c5}",
            ("saliency_guided", conv5, c5, "conv5 channel", {"method": "guided"}),
        ),
        (
            "SmoothGrad",
            f"The vanilla gradient averaged over {smooth} noisy copies of the image (noise "
            "std 0.1 x the image's range, DNNBrain's setting), which removes most of the "
            "speckle.",
            f" --smooth {smooth} --sigma-multiplier 0.1",
            (
                "saliency_smoothgrad",
                None,
                classes,
                "SmoothGrad, class",
                {"smooth": smooth, "sigma_multiplier": 0.1},
            ),
        ),
    )
    for title, explanation, options, spec in saliency_panels:
        stem = spec[0]

        def saliency(spec: tuple[Any, ...] = spec) -> list[str]:
            stem, layer, target, label, kwargs = spec
            grads = saliency_arrays(model, layer, images, target, **kwargs)
            return _per_image(
                ctx,
                n,
                stem,
                lambda k: saliency_figure(
                    grads[k],
                    display[k],
                    title=f"{label} {target[k] if isinstance(target, list) else target}",
                ),
            )

        out = stem.removeprefix("saliency_").replace("vanilla", "saliency")
        yield (title, explanation, base.format("saliency") + f"{options} --out {out}/", saliency)


def _upsample_panel(ctx: RunContext, n: int, conv5: Any, c5: int, base: str) -> PanelSpec:
    """One conv5 channel's map upsampled to the image."""
    from dnnbrain_captum.visualization import activation_map_figure

    assert ctx.images is not None and ctx.display is not None
    images, display, model = ctx.images, ctx.display, ctx.model

    def upsample() -> list[str]:
        from dnnbrain_captum.attr import UpsamplingActivationMapping

        maps = UpsamplingActivationMapping(model, conv5).attribute(images, target=c5)
        return _per_image(
            ctx,
            n,
            "upsample",
            lambda k: activation_map_figure(maps[k], display[k], title=f"conv5 channel {c5}"),
        )

    return (
        f"Upsampled activation map, conv5 channel {c5}",
        "The 8x8 map of one conv5 channel interpolated (bicubic) to the 32x32 image: where "
        "in the image this unit responds.",
        base.format("upsample") + f" --layer conv5 --channel {c5} --out upsample/",
        upsample,
    )


def _occlusion_panel(ctx: RunContext, n: int, classes: list[int], base: str) -> PanelSpec:
    """An 8x8 occluder slid over each digit, scored on the predicted class."""
    from dnnbrain_captum.visualization import occlusion_figure

    assert ctx.images is not None and ctx.display is not None
    images, display, model = ctx.images, ctx.display, ctx.model

    def occlusion() -> list[str]:
        from dnnbrain_captum.attr import OccluderDiscrepancyMapping

        grid = OccluderDiscrepancyMapping(model).attribute(
            images, target=classes, sliding_window_shapes=(8, 8), strides=(2, 2)
        )
        return _per_image(
            ctx,
            n,
            "occlusion",
            lambda k: occlusion_figure(
                grid[k], display[k], (8, 8), (2, 2), title=f"class {classes[k]}"
            ),
        )

    return (
        "Occlusion",
        "An 8x8 black square slides over the image in steps of 2 pixels; red marks where "
        "covering the image lowers the predicted class's logit most.",
        base.format("occlusion") + " --window 8 --stride 2 --out occlusion/",
        occlusion,
    )


def _available(module: str) -> bool:
    """Whether an algorithm module is part of this installation."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _demo_extra_panels(ctx: RunContext, n: int, c5: int, base: str) -> Iterator[PanelSpec]:
    """Panels of the receptive-field, synthesis, masked and minimal-image algorithms."""
    import torch

    assert ctx.images is not None and ctx.display is not None
    theoretical = _theoretical_rf_panel(ctx)
    if _available("dnnbrain_captum.optim"):
        yield _synthesis_panel(ctx)
    with torch.no_grad():
        classes = ctx.model(ctx.images).argmax(dim=1).tolist()
    if "mask" in SUBCOMMANDS:
        yield _mei_mask_panel(ctx)
    if "minimal" in SUBCOMMANDS:
        yield _minimal_parcels_panel(ctx, n, classes, base)
        yield _minimal_components_panel(ctx, n, classes, base)
    if "empirical-rf" in SUBCOMMANDS:
        yield _empirical_rf_panel(ctx)
    yield theoretical


def _theoretical_rf_panel(ctx: RunContext) -> PanelSpec:
    """Theoretical fields of a middle unit of conv1, conv3 and conv5 on the first digit."""
    from dnnbrain_captum.visualization import receptive_field_figure

    assert ctx.display is not None
    model, display = ctx.model, ctx.display

    def theoretical() -> list[str]:
        from dnnbrain_captum.receptive_field import TheoreticalReceptiveField

        analysis = TheoreticalReceptiveField(model, (3, *ctx.image_size))
        layers = ("conv1", "conv3", "conv5")
        regions = [
            analysis.find_region(name, (4, 4) if name != "conv1" else (16, 16)) for name in layers
        ]
        labels = [f"{name}: {analysis[name].size[0]} px" for name in layers]
        ctx.save_figure("rf_theoretical.png", receptive_field_figure(display[0], regions, labels))
        return ["rf_theoretical.png"]

    return (
        "Theoretical receptive fields",
        "The pixels one unit in the middle of conv1, conv3 and conv5 can see, from the "
        "network's computation graph (fields grow with depth; conv5's covers the digit).",
        f"{PROG} rf --digits 1 --layer conv5 --unit 4 4 --out rf/",
        theoretical,
    )


def _synthesis_panel(ctx: RunContext) -> PanelSpec:
    """One image per digit class, optimised to maximise that class's logit."""
    model = ctx.model

    def synthesis() -> list[str]:
        from dnnbrain_captum.optim import SynthesisImage, random_images
        from dnnbrain_captum.visualization import synthesis_grid

        classes = list(range(10))
        result = SynthesisImage(model).attribute(
            random_images(10, ctx.image_size),
            target=classes,
            n_iter=ctx.record["demo_steps"],
            return_history=True,
        )
        titles = [
            f"class {c}: {v:.0f}"
            for c, v in zip(classes, result.activation[:, -1].tolist(), strict=True)
        ]
        fig = synthesis_grid(result.images.detach().clamp(0, 1), titles, ncols=5)
        ctx.save_figure("synthesis.png", fig)
        return ["synthesis.png"]

    return (
        "Synthesised images (activation maximisation)",
        "For each digit class, an image optimised from grey to maximise the class logit "
        "(Fourier parametrisation, random jitter/scale/rotation, "
        f"{ctx.record['demo_steps']} Adam steps); the "
        "title gives the logit reached.",
        f"{PROG} synthesize --channel 0-9 --n-iter {ctx.record['demo_steps']} --out synthesis/",
        synthesis,
    )


def _minimal_parcels_panel(ctx: RunContext, n: int, classes: list[int], base: str) -> PanelSpec:
    """Minimal image over about 30 SLIC superpixels, removal search."""
    model = ctx.model

    def minimal_parcels() -> list[str]:
        from dnnbrain_captum.attr.minimal import MinimalParcelImage

        result = MinimalParcelImage(model).attribute(
            ctx.images,
            target=classes,
            segmentation="slic",
            segmentation_kwargs={"n_segments": 30},
            search_criterion="removal",
        )
        return _minimal_figures(
            ctx,
            n,
            "minimal_parcels",
            result,
            lambda k: f"{int(result.n_selected[k])} of {int(result.n_parcels[k])} parcels",
        )

    return (
        "Minimal image (superpixels)",
        "The digit cut into about 30 SLIC superpixels; superpixels are removed (set to "
        "black) as long as the predicted class keeps 90 % of its logit.",
        base.format("minimal") + " --method slic --segment n_segments=30 --search removal "
        "--out minimal/",
        minimal_parcels,
    )


def _minimal_components_panel(ctx: RunContext, n: int, classes: list[int], base: str) -> PanelSpec:
    """Minimal image over the PCA components of 4x4 tiles, threshold search."""
    model = ctx.model

    def minimal_components() -> list[str]:
        from dnnbrain_captum.attr.minimal_component import MinimalComponentImage

        result = MinimalComponentImage(model).attribute(
            ctx.images,
            target=classes,
            decomposition="pca",
            patch_size=4,
            search_criterion="threshold",
        )
        total = int(result.selected.shape[1])
        return _minimal_figures(
            ctx,
            n,
            "minimal_components",
            result,
            lambda k: f"mean + {int(result.n_selected[k])} of {total} PCA components",
            kept=False,
        )

    return (
        "Minimal image (PCA components)",
        "The digit rebuilt from the fewest principal components of its 4x4 tiles, "
        "ranked by the logit each one alone gives, that keep 90 % of the class logit.",
        base.format("minimal") + " --method pca --patch-size 4 --search threshold "
        "--out minimal_pca/",
        minimal_components,
    )


def _empirical_rf_panel(ctx: RunContext) -> PanelSpec:
    """Empirical receptive field of the most active conv3 channel over many digits."""
    model = ctx.model
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
            result.map,
            result.size.tolist(),
            title=f"conv3 channel {c3}, {many.shape[0]} digits (theoretical {theory[0]} px)",
        )
        ctx.save_figure("rf_empirical.png", fig)
        return ["rf_empirical.png"]

    return (
        "Empirical receptive field",
        f"The upsampled map of one conv3 channel on {ctx.record['demo_rf_images']} digits, "
        "each cut out over the "
        "theoretical field of the image's most active unit and averaged: the part of the "
        "field the channel actually uses (dashed: half-maximum extent).",
        f"{PROG} empirical-rf --digits {ctx.record['demo_rf_images']} --layer conv3 "
        f"--channel {c3} --out erf/",
        empirical,
    )


def _mei_mask_panel(ctx: RunContext) -> PanelSpec:
    """Walker et al. (2019): synthesise an image per conv3 unit, then its tight mask."""

    def make() -> list[str]:
        import torch

        from dnnbrain_captum.attr.masked import MaskedImage
        from dnnbrain_captum.optim import SynthesisImage, random_images
        from dnnbrain_captum.visualization import synthesis_grid

        units = [(c, *MEI_UNIT) for c in MEI_CHANNELS]
        start = random_images(len(units), ctx.image_size, seed=MEI_SEED, device=ctx.device)
        mei = SynthesisImage(ctx.model, "conv3").attribute(
            start,
            target=units,
            n_iter=ctx.record["demo_steps"],
            seed=MEI_SEED,
            return_history=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masked = MaskedImage(ctx.model, "conv3").attribute(
                mei.images.detach(), target=units, return_masks=True
            )
        kept = (masked.activation / masked.baseline).tolist()
        area = masked.masks.mean(dim=(1, 2, 3)).tolist()
        titles = [
            f"ch {c}: {v:.1f}"
            for c, v in zip(MEI_CHANNELS, mei.activation[:, -1].tolist(), strict=True)
        ]
        titles += [f"mask: {a:.0%} of pixels" for a in area]
        titles += [f"masked: {r:.0%} kept" for r in kept]
        rows = torch.cat(
            [mei.images.detach(), masked.masks.expand(-1, 3, -1, -1), masked.images.detach()]
        )
        fig = synthesis_grid(rows.clamp(0, 1).cpu(), titles, ncols=len(units))
        ctx.save_figure("mask_synthesis.png", fig)
        return ["mask_synthesis.png"]

    channels = ",".join(str(c) for c in MEI_CHANNELS)
    row, col = MEI_UNIT
    return (
        "Synthesise, then mask (Walker et al. 2019)",
        f"Top row: for six conv3 units (channels {channels}, the unit at row {row}, column "
        f"{col} of the 8x8 map), an image synthesised from noise to drive that unit (title: "
        "the activation reached). Middle row: its tight mask, the convex hull of the "
        "synthesis's high-contrast pixels, blurred and eroded as far as the unit keeps at "
        "least 90 % of its activation on the hull image. Bottom row: the synthesis under that "
        "mask, with the share of the hull activation it keeps.",
        f"{PROG} synthesize --layer conv3 --channel {channels} --unit {row} {col} "
        f"--n-iter {ctx.record['demo_steps']} --seed {MEI_SEED} --out mei/ && "
        f"{PROG} mask --synthesis mei/ "
        "--out mei_mask/",
        make,
    )
