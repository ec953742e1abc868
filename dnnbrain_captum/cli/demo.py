"""``dnnbrain-captum demo``: every algorithm on the bundled digits model, with
``index.html``."""

from __future__ import annotations

import argparse
import html
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dnnbrain_captum.cli._args import PROG, CLIError, Subcommand, _register

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext

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
        "--n-images",
        type=int,
        default=None,
        metavar="N",
        help="number of sample digits (1-8; default 3, with --quick 2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller settings (fewer digits, synthesis steps, noise samples and images)",
    )
    parser.add_argument(
        "--atlas", action="store_true", help="also build a small unit atlas (DIR/atlas/index.html)"
    )
    parser.set_defaults(
        model="digits", weights=None, layer=None, image_size=None, device="cpu", digits=None
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

    n = args.n_images if args.n_images is not None else (2 if args.quick else 3)
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
    from dnnbrain_captum.cli._demo_panels import demo_panels

    panels: list[DemoPanel] = []
    specs = list(demo_panels(ctx, n))
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
