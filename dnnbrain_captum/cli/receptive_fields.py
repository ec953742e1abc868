"""``dnnbrain-captum rf`` and ``empirical-rf``: theoretical and empirical receptive
fields."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _baseline_value,
    _channel_option,
    _common_options,
    _has_module,
    _occluder_options,
    _one_line,
    _pair_arg,
    _positive,
    _register,
    _unit_option,
)

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext


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
    import numpy as np
    import torch

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
    unit = (
        tuple(args.unit)
        if args.unit is not None
        else (entry.output_size[0] // 2, entry.output_size[1] // 2)
    )
    region = analysis.find_region(ctx.layer, unit)
    ctx.save_array("region.npy", np.asarray(region, dtype=np.int64))
    ctx.record["region"] = {
        "layer": ctx.layer_name,
        "unit": list(unit),
        "rows": list(region[0]),
        "columns": list(region[1]),
    }
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


def _add_empirical_rf(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser, layer_required=True)
    parser.add_argument(
        "--engine",
        choices=("upsample", "occlusion"),
        default="upsample",
        help="the map measured on each image",
    )
    parser.add_argument(
        "--alignment",
        choices=("activation", "map"),
        default="activation",
        help="best unit per image: highest activation (Zhou et al.) or "
        "highest mean map over its field (DNNBrain)",
    )
    parser.add_argument(
        "--size-threshold",
        type=float,
        default=0.5,
        help="fraction of the mean map's range that defines the size (0.5: "
        "full width at half maximum)",
    )
    parser.add_argument(
        "--interpolate",
        choices=("nearest", "bilinear", "bicubic", "area"),
        default="bicubic",
        help="upsample engine: interpolation",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="Q",
        help="upsample engine: floor below the Q-quantile (DNNBrain used 0.5)",
    )
    _occluder_options(parser, note="occlusion engine: ")
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
    ctx.save_result(result.map, rows="field")
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
            "Writes result.npy (R, R), the mean map; empirical_rf.json (the size estimate in "
            "pixels next to the theoretical size) and empirical_rf.png.",
            example=f"{PROG} empirical-rf images/ --model alexnet --weights alexnet.pth "
            "--layer conv5 --channel 121 --engine upsample --threshold 0.5 --out erf/",
            add_arguments=_add_empirical_rf,
            run=_run_empirical_rf,
        )
    )
