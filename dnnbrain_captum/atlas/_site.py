"""The atlas's static site and ``atlas.json``, from the finished runs (rank 0 only).

Pages are plain HTML with one inline style sheet: no script, no font, nothing fetched, so the
site opens from the file system, offline. Every number on a page is also in ``atlas.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dnnbrain_captum._utils.targets import channel_maps, layer_output
from dnnbrain_captum.atlas._activations import ChannelActivations, on_model_device
from dnnbrain_captum.atlas._files import RUNS, AtlasFolder
from dnnbrain_captum.atlas._occlusion import shared_sweep, top_grids
from dnnbrain_captum.atlas._pieces import Picked
from dnnbrain_captum.atlas._render import Painter
from dnnbrain_captum.receptive_field.empirical import occlusion_pixel_map
from dnnbrain_captum.receptive_field.theoretical import TheoreticalReceptiveField
from dnnbrain_captum.runner import read_results

__all__ = ["write_site"]

STYLE = """
body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
a{color:#0645ad}nav{margin:.5em 0 1em}nav a{margin-right:1em}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{display:flex;flex-direction:column;align-items:center;border:1px solid #ccc;
background:#fff;padding:4px;text-decoration:none;color:#222;font-size:12px}
.card img,.cell img{width:64px;height:64px;image-rendering:pixelated}
.cell{display:inline-flex;flex-direction:column;align-items:center;margin:3px;font-size:11px;
max-width:72px;overflow-wrap:anywhere;text-align:center}
.big .cell{max-width:170px}.big img{width:160px;height:160px;image-rendering:pixelated}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _cell(src: str, caption: str, alt: str) -> str:
    return (
        f'<span class="cell"><img src="{escape(src)}" alt="{escape(alt)}">{escape(caption)}</span>'
    )


def _num(value: float) -> str:
    return f"{value:.4g}"


def _layer_maps(
    model: nn.Module, plan: Any, images: torch.Tensor, channels: list[int]
) -> np.ndarray:
    """The selected channel's map of each image at the layer (channels-first): (N, H', W')."""
    with torch.no_grad():
        x = on_model_device(model, images)
        output = layer_output(model, plan.module, (x,), None, plan.transform)
    return channel_maps(output, channels).cpu().numpy()


def _best_units(
    model: nn.Module, plan: Any, images: torch.Tensor, entry: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each top stimulus's best unit (the highest value of its channel's map): (m, K, 2); and
    which pixels of each channel's empirical-field canvas some top stimulus covers (the part of
    its best unit's theoretical box inside the image): (m, R_h, R_w) bool."""
    per_top = [c for c in plan.channels for _ in range(k)]
    maps = _layer_maps(model, plan, images, per_top)
    flat = maps.reshape(len(per_top), -1).argmax(1)
    n_w = entry.output_size[1]
    units = np.stack([flat // n_w, flat % n_w], axis=1).reshape(len(plan.channels), k, 2)
    inside = []
    for axis in range(2):
        start = units[..., axis] * entry.stride[axis] - entry.padding[axis]  # (m, K)
        pixel = start[..., None] + np.arange(entry.size[axis])  # (m, K, R)
        inside.append((pixel >= 0) & (pixel < images.shape[-2 + axis]))
    covered = (inside[0][..., :, None] & inside[1][..., None, :]).any(axis=1)
    return units, covered


def _channel_values(
    model: nn.Module, plan: Any, images: torch.Tensor, channels: list[int], reduction: str
) -> np.ndarray:
    pass_ = ChannelActivations(model, [plan.module], reduction, plan.transform)
    pass_.probe(images[:1])
    values = pass_.attribute(images).cpu()
    return values[torch.arange(len(channels)), torch.tensor(channels)].numpy()


def _stimulus_ids(folder: AtlasFolder) -> list[str]:
    manifest = json.loads((folder.out / RUNS / "activations" / "manifest.json").read_text("utf-8"))
    return [str(i) for i in manifest["request"]["stimulus_ids"]]


def write_site(
    model: nn.Module,
    plans: Sequence[Any],
    last: nn.Module,
    data: Any,
    values: np.ndarray,
    folder: AtlasFolder,
    settings: dict[str, Any],
    mean: Any,
    std: Any,
    show_progress: bool,
) -> None:
    """Write the pictures, the pages and ``atlas.json`` of every layer (``last``: the layer
    that runs last, where the receptive-field analysis stops)."""
    painter = Painter(mean, std)
    ids = _stimulus_ids(folder)
    used = sorted(
        {int(i) for p in plans for i in np.concatenate([p.top.ravel(), p.bottom.ravel()])}
    )
    folder.write_all(
        {
            f"stimuli/{index}.png": painter.stimulus(Picked(data, [index])[0])
            for index in tqdm(used, desc="atlas stimuli", disable=not show_progress)
        }
    )
    example = Picked(data, [0])[0]
    table = TheoreticalReceptiveField(model, tuple(example.shape)).compute(until=last)
    layers = []
    for plan in plans:
        entry = table.entry(plan.path)
        channels = _layer_channels(
            model, plan, data, values, folder, settings, painter, entry, ids, show_progress
        )
        layers.append(
            {
                "layer": plan.name,
                "path": plan.path,
                "folder": plan.folder,
                "shape": list(plan.shape),
                "rf_size": list(entry.size),
                "rf_stride": list(entry.stride),
                "channels": channels,
            }
        )
    atlas = {
        "format": "dnnbrain_captum.atlas",
        "format_version": 1,
        "model": type(model).__name__,
        "n_stimuli": len(ids),
        **settings,
        "layers": layers,
    }
    folder.write_json("atlas.json", atlas)
    folder.write_text("index.html", _index_page(atlas))


def _read_layer_runs(
    plan: Any, data: Any, folder: AtlasFolder, settings: dict[str, Any]
) -> tuple[Any, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """One layer's stored results: maps, occlusion pixel maps, fields, syntheses, minimal images."""
    runs = folder.out / RUNS / plan.folder
    maps = read_results(runs / "maps")
    grids = np.array(read_results(runs / "occlusion"))
    if shared_sweep(settings["occlusion"]):  # (distinct top stimuli, M, rows, cols)
        grids = top_grids(grids, plan.top, np.unique(plan.top))
    grids = torch.from_numpy(np.ascontiguousarray(grids))
    size = tuple(Picked(data, [0])[0].shape[-2:])
    occlusion = settings["occlusion"]
    window, stride = (tuple(occlusion[key])[-2:] for key in ("sliding_window_shapes", "strides"))
    occluded = occlusion_pixel_map(grids, size, window, stride).numpy()  # type: ignore[arg-type]
    fields = np.asarray(read_results(runs / "empirical_rf"))
    syntheses = torch.from_numpy(np.array(read_results(runs / "syntheses")))
    minimal = torch.from_numpy(np.array(read_results(runs / "minimal")))
    return maps, occluded, fields, syntheses, minimal


def _layer_channels(
    model: nn.Module,
    plan: Any,
    data: Any,
    values: np.ndarray,
    folder: AtlasFolder,
    settings: dict[str, Any],
    painter: Painter,
    entry: Any,
    ids: list[str],
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Pictures, page and ``atlas.json`` record of every selected channel of one layer."""
    k, s, m = settings["top_k"], settings["n_syntheses"], len(plan.channels)
    maps, occluded, fields, syntheses, minimal = _read_layer_runs(plan, data, folder, settings)
    top_images = torch.stack([Picked(data, [int(i)])[0] for i in plan.top.reshape(-1)])
    units, covered = _best_units(model, plan, top_images, entry, k)
    repeated = [c for c in plan.channels for _ in range(s)]
    synthesis_values = _channel_values(
        model, plan, syntheses, repeated, settings["reduction"]
    ).reshape(m, s)
    minimal_values = _channel_values(model, plan, minimal, plan.channels, settings["reduction"])
    records = []
    for j, channel in enumerate(
        tqdm(plan.channels, desc=f"atlas {plan.name}", disable=not show_progress)
    ):
        column = values[:, plan.offset + channel]
        unit = (int(units[j, 0, 0]), int(units[j, 0, 1]))
        region = entry.region(unit, label=plan.path)
        stem = f"{plan.folder}/img/{channel}"
        pictures = {}
        for r in range(k):
            image = top_images[j * k + r]
            pictures[f"{stem}_map{r}.png"] = painter.heat(maps[j * k + r], image)
            pictures[f"{stem}_occ{r}.png"] = painter.heat(occluded[j * k + r], image)
        pictures[f"{stem}_rf.png"] = painter.box(top_images[j * k], region)
        field = fields[j, 2:].reshape(entry.size)
        pictures[f"{stem}_erf.png"] = painter.field(field, covered[j])
        for q in range(s):
            pictures[f"{stem}_syn{q}.png"] = painter.stimulus(syntheses[j * s + q])
        pictures[f"{stem}_min.png"] = painter.stimulus(minimal[j])
        folder.write_all(pictures)
        record = {
            "channel": channel,
            "top_ids": [ids[i] for i in plan.top[j]],
            "top_indices": plan.top[j].tolist(),
            "top_activations": [float(column[i]) for i in plan.top[j]],
            "bottom_ids": [ids[i] for i in plan.bottom[j]],
            "bottom_indices": plan.bottom[j].tolist(),
            "bottom_activations": [float(column[i]) for i in plan.bottom[j]],
            "synthesis_activation": [float(v) for v in synthesis_values[j]],
            "minimal_activation": float(minimal_values[j]),
            "rf_size": list(entry.size),
            "rf_stride": list(entry.stride),
            "best_unit": list(unit),
            "best_unit_region": [list(b) for b in region],
            "empirical_rf_size": [int(v) for v in fields[j, :2]],
            "page": f"{plan.folder}/{channel}.html",
        }
        records.append(record)
    _write_pages(plan, records, settings, folder)
    return records


def _write_pages(
    plan: Any, records: list[dict[str, Any]], settings: dict[str, Any], folder: AtlasFolder
) -> None:
    """Write every channel's page, each linked to its layer's previous and next channel."""
    pages = {}
    for j, record in enumerate(records):
        before = records[j - 1]["channel"] if j > 0 else None
        after = records[j + 1]["channel"] if j + 1 < len(records) else None
        page = _channel_page(plan, record, settings, before, after)
        pages[record["page"]] = page.encode("utf-8")
    folder.write_all(pages)


def _channel_page(
    plan: Any, rec: dict[str, Any], settings: dict[str, Any], before: int | None, after: int | None
) -> str:
    c, k, s = rec["channel"], settings["top_k"], settings["n_syntheses"]
    links = ['<a href="../index.html">index</a>']
    if before is not None:
        links.append(f'<a href="{before}.html">&larr; channel {before}</a>')
    if after is not None:
        links.append(f'<a href="{after}.html">channel {after} &rarr;</a>')
    top_value = rec["top_activations"][0]

    def stimuli(kind: str) -> str:
        cells = [
            _cell(f"../stimuli/{i}.png", f"{sid} ({_num(v)})", f"stimulus {sid}")
            for i, sid, v in zip(
                rec[f"{kind}_indices"], rec[f"{kind}_ids"], rec[f"{kind}_activations"], strict=True
            )
        ]
        return "".join(cells)

    maps = "".join(_cell(f"img/{c}_map{r}.png", f"#{r + 1}", "activation map") for r in range(k))
    occ = "".join(_cell(f"img/{c}_occ{r}.png", f"#{r + 1}", "occlusion map") for r in range(k))
    syn = "".join(
        _cell(f"img/{c}_syn{q}.png", _num(v), f"synthesis {q}")
        for q, v in zip(range(s), rec["synthesis_activation"], strict=True)
    )
    (h0, h1), (w0, w1) = rec["best_unit_region"]
    body = f"""<nav>{" ".join(links)}</nav>
<h1>{escape(plan.name)} channel {c}</h1>
<p>Layer <code>{escape(plan.path)}</code>, output {" &times; ".join(map(str, plan.shape))};
activation = channel {escape(settings["reduction"])} over the map. Channels are 0-based.</p>
<table>
<tr><th>top activation</th><td>{_num(top_value)}</td></tr>
<tr><th>best synthesis activation</th><td>{_num(max(rec["synthesis_activation"]))}
({_num(max(rec["synthesis_activation"]) / top_value if top_value else float("nan"))}
&times; the top stimulus)</td></tr>
<tr><th>theoretical receptive field</th><td>{rec["rf_size"][0]} &times; {rec["rf_size"][1]} px,
stride {rec["rf_stride"][0]} &times; {rec["rf_stride"][1]}</td></tr>
<tr><th>empirical receptive field (over the top {k})</th>
<td>{rec["empirical_rf_size"][0]} &times; {rec["empirical_rf_size"][1]} px</td></tr>
<tr><th>minimal image activation</th><td>{_num(rec["minimal_activation"])}</td></tr>
</table>
<h2>Top {k} stimuli</h2><div>{stimuli("top")}</div>
<h3>Upsampled activation maps</h3><div>{maps}</div>
<h3>Occlusion maps (original &minus; occluded)</h3><div>{occ}</div>
<h2>Bottom {k} stimuli</h2><div>{stimuli("bottom")}</div>
<h2>Receptive field</h2>
<div class="big">{
        _cell(
            f"img/{c}_rf.png",
            f"best unit {tuple(rec['best_unit'])}: rows {h0}-{h1 - 1}, cols {w0}-{w1 - 1}",
            "receptive field of the best unit on the top stimulus",
        )
    }
{_cell(f"img/{c}_erf.png", "empirical field (mean aligned map)", "empirical receptive field")}
</div>
<h2>Syntheses (activation; top stimulus {_num(top_value)})</h2><div>{syn}</div>
<h2>Minimal image of the top stimulus</h2>{_minimal_note(top_value)}
<div class="big">{
        _cell(f"img/{c}_min.png", _num(rec["minimal_activation"]), "minimal image")
    }</div>"""
    return _page(f"{plan.name} channel {c}", body)


def _minimal_note(top_value: float) -> str:
    if top_value > 0:
        return ""
    return (
        "\n<p>The top activation is not positive: a minimal image that keeps a fraction of it "
        "is not well defined (see <code>MinimalParcelImage</code>).</p>"
    )


def _index_page(atlas: dict[str, Any]) -> str:
    nav = " ".join(
        f'<a href="#layer-{escape(layer["folder"])}">{escape(layer["layer"])}</a>'
        for layer in atlas["layers"]
    )
    sections = []
    for layer in atlas["layers"]:
        cards = "".join(
            f'<a class="card" href="{escape(ch["page"])}">'
            f'<img src="{escape(layer["folder"])}/img/{ch["channel"]}_syn0.png" alt="synthesis">'
            f'<img src="stimuli/{ch["top_indices"][0]}.png" alt="top stimulus">'
            f"{ch['channel']}</a>"
            for ch in layer["channels"]
        )
        size, stride = layer["rf_size"], layer["rf_stride"]
        sections.append(
            f'<section id="layer-{escape(layer["folder"])}"><h2>{escape(layer["layer"])}</h2>'
            f"<p><code>{escape(layer['path'])}</code>, output "
            f"{' &times; '.join(map(str, layer['shape']))}; receptive field {size[0]} &times; "
            f"{size[1]} px, stride {stride[0]}. Each card: a synthesis and the top stimulus.</p>"
            f'<div class="grid">{cards}</div></section>'
        )
    body = (
        f"<h1>Unit atlas of {escape(atlas['model'])}</h1>\n"
        f"<p>{atlas['n_stimuli']} stimuli; top and bottom {atlas['top_k']} per channel by "
        f"channel {escape(atlas['reduction'])}. All numbers: "
        f'<a href="atlas.json">atlas.json</a>.</p>\n<nav>{nav}</nav>\n' + "\n".join(sections)
    )
    return _page(f"Unit atlas of {atlas['model']}", body)
