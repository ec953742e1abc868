"""``dnnbrain-captum demo``: every algorithm on the bundled digits model, with
``index.html``."""

from __future__ import annotations

import argparse
import html
import importlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    SUBCOMMANDS,
    CLIError,
    Subcommand,
    _register,
)

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext
from dnnbrain_captum.cli.saliency import (
    saliency_arrays,
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
    parser.add_argument("--overwrite", action="store_true", help="replace results already in DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    parser.add_argument(
        "--n-images", type=int, default=3, metavar="N", help="number of sample digits (1-8)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller settings (fewer synthesis steps, noise samples and images), for tests",
    )
    parser.add_argument(
        "--atlas", action="store_true", help="also build a small unit atlas (DIR/atlas/index.html)"
    )
    parser.set_defaults(
        model="digits", weights=None, layer=None, image_size=None, device="cpu", digits=None
    )


def _demo_channel(ctx: RunContext, layer: str) -> int:
    """The channel of ``layer`` most active, on average, on the sample digits."""
    import torch

    from dnnbrain_captum._utils.hooks import run_to_layer
    from dnnbrain_captum.cli._common import _resolve_layer

    assert ctx.images is not None
    with torch.no_grad():
        output = run_to_layer(ctx.model, _resolve_layer(ctx.model, layer), (ctx.images,))
    return int(output.mean(dim=(0, 2, 3)).argmax())


PanelSpec = tuple[str, str, str, Callable[[], list[str]]]


def _demo_panels(ctx: RunContext, n: int) -> Iterator[PanelSpec]:
    """(title, explanation, equivalent command, make-figures) for every available algorithm."""
    import torch

    from dnnbrain_captum.cli._common import _resolve_layer
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
    import torch

    from dnnbrain_captum.visualization import receptive_field_figure

    assert ctx.images is not None and ctx.display is not None
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

    if _available("dnnbrain_captum.optim"):

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

        yield (
            "Synthesised images (activation maximisation)",
            "For each digit class, an image optimised from grey to maximise the class logit "
            "(Fourier parametrisation, random jitter/scale/rotation, "
            f"{ctx.record['demo_steps']} Adam steps); the "
            "title gives the logit reached.",
            f"{PROG} synthesize --channel 0-9 --n-iter {ctx.record['demo_steps']} --out synthesis/",
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
                result = MaskedImage(model).attribute(ctx.images, target=classes, return_masks=True)
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k],
                    result.images[k].clamp(0, 1),
                    result.masks[k, 0],
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
                ctx.images,
                target=classes,
                segmentation="slic",
                segmentation_kwargs={"n_segments": 30},
                search_criterion="removal",
            )
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k],
                    result.images[k].clamp(0, 1),
                    result.masks[k].float(),
                    (
                        "original",
                        f"{int(result.n_selected[k])} of {int(result.n_parcels[k])} parcels",
                        "kept pixels",
                    ),
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
                ctx.images,
                target=classes,
                decomposition="pca",
                patch_size=4,
                search_criterion="threshold",
            )
            total = int(result.selected.shape[1])
            names = []
            for k in range(n):
                fig = minimal_image_figure(
                    display[k],
                    result.images[k].clamp(0, 1),
                    None,
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
                result.map,
                result.size.tolist(),
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
    out: Path,
    panels: list[DemoPanel],
    seconds: float,
    n: int,
    accuracy: float,
    held_out: int,
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
        f"digits CNN ({accuracy:.1%} accuracy on the {held_out} held-out digits) and {n} of those "
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
            if name.endswith(".html"):
                parts.append(f'<p><a href="{html.escape(name)}">open {html.escape(name)}</a></p>')
                continue
            alt = html.escape(f"{panel.title}: {name}")
            parts.append(f'<img src="{html.escape(name)}" alt="{alt}">')
        parts.append("</div></section>")
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts) + "\n", encoding="utf-8")


def _run_demo(args: argparse.Namespace, ctx: RunContext) -> None:
    import torch
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
    if args.atlas:
        from dnnbrain_captum.cli.atlas import demo_atlas

        panels.append(demo_atlas(ctx, args.quick))
    held_out, held_out_labels = digits_images()
    with torch.no_grad():
        predicted = ctx.model(held_out.to(ctx.device)).argmax(dim=1).cpu()
    accuracy = float((predicted == held_out_labels).float().mean())
    ctx.record["accuracy"] = accuracy
    seconds = time.perf_counter() - started
    _write_index(ctx.out, panels, seconds, n, accuracy, int(held_out.shape[0]))
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
