"""Minimal parcel image: speed of the searches, and how close each gets to the optimum.

Run: ``python benchmarks/bench_minimal.py [--quality-only | --speed-only | --incremental-only]
[--repeats R] [--threads T]`` (default 3 repetitions of the incremental comparison, 2 threads).

Speed: torchvision AlexNet (random weights), conv5 (``features.10``) channel 122, ``max``
criterion, black fill, one 224×224 synthetic image cut into felzenszwalb parcels (the seed's
defaults; computed once and given to every contender). Contenders: the default search
(backward elimination, ``candidates_per_step=16``), the exact greedy order
(``candidates_per_step=None``), the old default (DNNBrain's ``"max"`` ranking search), and the
default search run with one full forward per candidate (DNNBrain's way of evaluating; the
search logic is the library's, so the chosen parcels are asserted identical). CPU, 2 threads.
These contenders use ``method="full"`` (batched forwards; see below for the incremental path).

Incremental (issue 16; part of ``--speed-only``, alone with ``--incremental-only``): the
default removal search on AlexNet conv5 channel 122 with 50 SLIC parcels (``n_segments=50``)
of the same image, ``method="full"`` (the batched full path, ``perturbations_per_eval=64``)
against ``method="incremental"`` and ``method="auto"``, alternated, best of
``--repeats`` (default 3); the chosen parcels are asserted identical. Reported: candidates
scored by each path, clean passes, and the multiply-adds per candidate of the incremental and
the full path (``ParcelRemovals.stats``, read from the DEBUG log record).

Quality: on grids of 9 and 12 parcels, for the four model families of
``tests/test_minimal_search.py`` (digits logits, digits conv3 channels, a region-selective
model, a random CNN), each search's number of parcels against the brute-force minimum (every
subset scored), and whether the result is locally minimal.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import alexnet

from dnnbrain_captum import MinimalParcelImage
from dnnbrain_captum.attr._sk_bridge import segment

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CHANNEL = 122
LAYER = "features.10"  # DNNBrain's conv5
REPEATS = 3


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_image() -> torch.Tensor:
    """A smooth coloured scene (blobs + texture), ImageNet-normalised, shape (1, 3, 224, 224)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 7, 7, generator=generator)
    image = F.interpolate(coarse, size=224, mode="bicubic", align_corners=False)
    image = (image + 0.08 * torch.rand(1, 3, 224, 224, generator=generator)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (image - mean) / std


def full_forward_scorer(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function that runs the whole network once per image, reading conv5 by a hook."""
    captured: list[torch.Tensor] = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        values = []
        handle = model.features[10].register_forward_hook(
            lambda m, a, o: captured.append(o[0, CHANNEL].amax())
        )
        try:
            for image in images:
                model(image[None])
                values.append(captured.pop())
        finally:
            handle.remove()
        return torch.stack(values)[:, None]

    return forward


def speed() -> None:
    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    x = test_image()
    labels = segment(x[0], "felzenszwalb")
    n_parcels = int(labels.max()) + 1
    minimal = MinimalParcelImage(model, LAYER)

    def run(search: str, candidates: int | None = 16, batch: int = 32) -> object:
        return minimal.attribute(
            x,
            target=CHANNEL,
            feature_mask=labels,
            search_criterion=search,
            candidates_per_step=candidates,
            perturbations_per_eval=batch,
            method="full",  # the batched full path (the hook below counts its candidates)
        )

    def loop() -> object:
        return MinimalParcelImage(full_forward_scorer(model)).attribute(
            x, target=0, feature_mask=labels, perturbations_per_eval=1
        )

    default = run("removal")
    assert torch.equal(loop().masks, default.masks), "the full-forward loop chose other parcels"
    counted = {}
    for name, fn in (("removal", lambda: run("removal")), ("exact", lambda: run("removal", None))):
        calls: list[int] = []
        hook = functools.partial(lambda seen, m, a, o: seen.append(len(o)), calls)
        handle = model.features[10].register_forward_hook(hook)
        fn()
        handle.remove()
        counted[name] = sum(calls) - 1
    rows = [
        ("one full forward per candidate (default search)", best_of(1, loop)),
        ("default: removal, candidates_per_step=16", best_of(REPEATS, lambda: run("removal"))),
        (
            "removal, candidates_per_step=None (exact greedy)",
            best_of(REPEATS, lambda: run("removal", None)),
        ),
        ("old default: max (ranking + prefixes)", best_of(REPEATS, lambda: run("max"))),
    ]
    print(
        f"AlexNet conv5 channel {CHANNEL}, 224x224, {n_parcels} felzenszwalb parcels; default "
        f"kept {int(default.n_selected[0])} parcels; candidates scored: default "
        f"{counted['removal']}, exact {counted['exact']}, max {2 * n_parcels}"
    )
    print("| contender | time (s) | vs full forward per candidate |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {rows[0][1] / seconds:.1f}x |")


class _Records(logging.Handler):
    """Keeps the removal search's DEBUG record (its counts) of the last call."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "removal search:" in record.getMessage() and isinstance(record.args, dict):
            self.counts = dict(record.args)


def incremental_speed(repeats: int) -> None:
    """Minimal-parcel removal search: incremental inference against the batched full path."""
    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    x = test_image()
    labels = segment(x[0], "slic", {"n_segments": 50})
    n_parcels = int(labels.max()) + 1
    minimal = MinimalParcelImage(model, LAYER)
    records = _Records()
    logger = logging.getLogger("dnnbrain_captum.attr.minimal")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    counts: dict[str, dict[str, int]] = {}
    results: dict[str, object] = {}
    times: dict[str, float] = {}
    methods = ("full", "incremental", "auto")
    for _ in range(repeats):
        for method in methods:
            records.counts = {}
            start = time.perf_counter()
            results[method] = minimal.attribute(
                x, target=CHANNEL, feature_mask=labels, method=method, perturbations_per_eval=64
            )
            times[method] = min(times.get(method, float("inf")), time.perf_counter() - start)
            counts[method] = records.counts
    logger.removeHandler(records)
    for method in methods[1:]:
        assert torch.equal(results[method].masks, results["full"].masks), method
    inc = counts["incremental"]
    per_inc = inc["macs"] / max(inc["incremental"], 1)
    per_full = inc["full_macs"] / max(inc["incremental"], 1)
    print(
        f"\nAlexNet conv5 channel {CHANNEL}, 224x224, {n_parcels} SLIC parcels (n_segments=50); "
        f"kept {int(results['full'].n_selected[0])}; multiply-adds per candidate: incremental "
        f"{per_inc / 1e6:.0f} M, full path {per_full / 1e6:.0f} M "
        f"(ratio {per_full / per_inc:.2f}); "
        f"clean passes (incremental) {inc['clean']}"
    )
    print("| method | candidates incremental | candidates full path | time (s) | vs full |")
    print("|---|---|---|---|---|")
    for method in methods:
        got = counts.get(method) or {}
        scored = got.get("incremental", 0), got.get("full", "all")
        print(
            f"| {method} | {scored[0]} | {scored[1]} | {times[method]:.2f} | "
            f"{times['full'] / times[method]:.2f}x |"
        )


def quality() -> None:
    from tests.test_minimal_search import RATIO, all_subsets, brute_force, cases

    searches = {
        "removal (default, 16)": {"search_criterion": "removal"},
        "removal, candidates_per_step=2": {"search_criterion": "removal", "candidates_per_step": 2},
        "max (old default)": {"search_criterion": "max"},
        "fitting_curve": {"search_criterion": "fitting_curve"},
        "threshold": {"search_criterion": "threshold"},
    }
    for grid in ((3, 3), (3, 4)):
        stats = {name: [0, 0, 0, 0.0] for name in searches}  # optimal, local, n, excess
        for case in cases(10, grid):
            values, original = brute_force(case.score, case.image, case.labels)
            if original <= 0:
                continue
            level = RATIO * original
            subsets = all_subsets(int(case.labels.max()) + 1)
            minimum = int(subsets.sum(1)[values >= level].min())
            for name, options in searches.items():
                out = MinimalParcelImage(case.model, case.layer).attribute(
                    case.image[None],
                    target=case.target,
                    feature_mask=case.labels,
                    activation_ratio=RATIO,
                    **case.options,
                    **options,
                )
                kept = torch.zeros(subsets.shape[1], dtype=torch.bool)
                kept[torch.unique(case.labels[out.masks[0]])] = True
                code = int((kept.long() << torch.arange(kept.shape[0])).sum())
                removable = [
                    e
                    for e in torch.nonzero(kept)[:, 0].tolist()
                    if float(values[code & ~(1 << e)]) >= level
                ]
                entry = stats[name]
                entry[0] += int(kept.sum()) == minimum and float(values[code]) >= level
                entry[1] += not removable and float(values[code]) >= level
                entry[2] += 1
                entry[3] += int(kept.sum()) - minimum
        n_parcels = grid[0] * grid[1]
        print(
            f"\n{n_parcels} parcels ({grid[0]}x{grid[1]} grid), {stats[next(iter(stats))][2]} cases"
        )
        print(
            "| search | at the brute-force minimum | locally minimal (and above threshold) "
            "| mean excess parcels |"
        )
        print("|---|---|---|---|")
        for name, (optimal, local, n, excess) in stats.items():
            print(f"| {name} | {optimal}/{n} | {local}/{n} | {excess / n:.2f} |")


def main() -> None:
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 3
    if "--incremental-only" in sys.argv:
        incremental_speed(repeats)
        return
    if "--speed-only" not in sys.argv:
        quality()
    if "--quality-only" not in sys.argv:
        speed()
        incremental_speed(repeats)


if __name__ == "__main__":
    main()
