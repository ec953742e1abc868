"""Class occlusion (``layer=None``, issue 16): incremental inference vs our full path vs Captum.

Run: ``python benchmarks/bench_occlusion_class.py`` (random weights, one 224×224 image,
baseline 0, non-overlapping windows, class 3; ``--device``, ``--threads``, ``--models``).

Per model, three contenders are timed side by side in one process, alternating, best of
``--repeats``, per window: ``incremental`` (``OccluderDiscrepancyMapping(model).attribute(...,
method="incremental")`` with the cost model's batch), ``full`` (``method="full"``, cost model's
batch) and ``captum`` (``captum.attr.Occlusion``, ``sliding_window_shapes=(3, w, w)``,
``strides=(3, w, w)``, ``perturbations_per_eval=16``). With non-overlapping windows Captum's
attribution at a window's top-left pixel is that window's difference, so all three maps are
compared before any time is printed. Each contender runs once untimed first (our first call
traces the model with ``torch.fx``; the analysis is kept for later calls). Also printed: the
path ``method="auto"`` (the default) chooses, the multiply-adds per window of the incremental
and full paths up to the cut (the head after it costs the same on both), the elements the
incremental path moves per window (``moved_per_window``), the cost model's predicted speed-up
(``cost.predicted_speedup``: arithmetic, written elements, moved elements, operations per
batch) next to the measured one, and whether ``auto``'s choice was at least as fast as both the
other path and Captum (5 % tolerance).

``--models`` takes torchvision names and ``digits`` (the bundled digits CNN, 32 px).
``--fit`` refits the cost model's four constants to the measured speed-ups of the models run
(least squares on their logarithm, Nelder-Mead from the current constants; needs scipy) and
prints them, for ``attr/_incremental/cost.py``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch
from captum.attr import Occlusion
from torch import Tensor
from torchvision import models

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import OutputOcclusion, cost
from dnnbrain_captum.attr._incremental.cost import CPU_PATCH_BYTES, batch_size, predicted_speedup
from dnnbrain_captum.models.digits import DigitsCNN

SIZE, CLASS = 224, 3
DEFAULT = "resnet18:16,resnet50:32,vgg16:32"


class _Choice(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("occlusion map by"):
            self.last = "incremental" if "incremental" in message.split(":")[0] else "full"


def timed(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(name: str, window: int, device: torch.device, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    size = 32 if name == "digits" else SIZE
    model = (DigitsCNN() if name == "digits" else getattr(models, name)()).eval().to(device)
    x = torch.rand(1, 3, size, size, device=device)
    ours = OccluderDiscrepancyMapping(model)
    options = dict(target=CLASS, sliding_window_shapes=window, strides=window)
    captum = Occlusion(model)
    runs: dict[str, Callable[[], Tensor]] = {
        "incremental": lambda: ours.attribute(x, method="incremental", **options),
        "full": lambda: ours.attribute(x, method="full", **options),
        "captum": lambda: captum.attribute(
            x,
            target=CLASS,
            sliding_window_shapes=(3, window, window),
            strides=(3, window, window),
            baselines=0.0,
            perturbations_per_eval=16,
        ),
    }
    times: dict[str, float] = {}
    maps: dict[str, Tensor] = {}
    with torch.no_grad():
        for run in runs.values():
            run()  # untimed: the first call traces the model (kept for later calls)
        for _ in range(repeats):
            for key, run in runs.items():
                seconds, maps[key] = timed(run)
                times[key] = min(times.get(key, float("inf")), seconds)
        captum_grid = maps["captum"][0, 0, ::window, ::window]
        scale = maps["full"].abs().max().item()
        error = max(
            (maps["incremental"][0] - maps["full"][0]).abs().max().item(),
            (captum_grid - maps["full"][0]).abs().max().item(),
        )
        choice = _Choice()
        logger = logging.getLogger("dnnbrain_captum.attr.occlusion")
        logger.addHandler(choice)
        logger.setLevel(logging.DEBUG)
        ours.attribute(x, **options)
        logger.removeHandler(choice)
        engine = OutputOcclusion(model, x)
        engine.clean_targets(x, CLASS)
        grid = (size // window, size // window)
        sweep = engine.sweep_plan((window, window), (window, window), grid)
        incremental_macs, full_macs = engine.macs_per_window(sweep)
        moved = engine.moved_per_window(sweep)
        elements = engine.elements_per_window(sweep)
        windows = grid[0] * grid[1]
        batch = batch_size(engine.patch_bytes(sweep), device, windows, CPU_PATCH_BYTES)
        operations = (len(sweep.order) + 1) / batch  # the patches' operations and the head
    return {
        "per_window": {k: v / windows for k, v in times.items()},
        "error": error / scale,
        "auto": choice.last,
        "macs": (incremental_macs, full_macs),
        "moved": moved,
        "elements": elements,
        "operations": operations,
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=DEFAULT, help="name:window,... (torchvision)")
    parser.add_argument("--fit", action="store_true", help="refit the cost model's constants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"Class occlusion, random weights, {SIZE}x{SIZE} (digits 32x32), baseline 0, "
        "non-overlapping windows, "
        f"device {device}, {torch.get_num_threads()} threads, best of {args.repeats}; "
        "Captum perturbations_per_eval 16, ours chosen by the cost model"
    )
    print(
        "| model | window (windows) | incremental ms/window | full ms/window | "
        "Captum ms/window | incr. vs Captum | incr. vs full | GMAC/window incr. / full "
        "(ratio) | reached | moved/window | predicted incr. vs full | auto picks | auto ok | "
        "max rel. diff |"
    )
    print("|" + "---|" * 14)
    measured: list[tuple[float, dict[str, object]]] = []
    for item in args.models.split(","):
        name, window = item.split(":")
        r = compare(name, int(window), device, args.repeats)
        t = r["per_window"]
        inc, full = r["macs"]
        speedup = t["full"] / t["incremental"]
        ratio = full / inc
        moved = int(r["moved"])  # type: ignore[call-overload]
        predicted = predicted_speedup(inc, full, moved, r["operations"], r["elements"])  # type: ignore[arg-type]
        measured.append((speedup, r))
        chosen = t[str(r["auto"])] if r["auto"] else float("nan")
        auto_ok = chosen <= 1.05 * min(t["full"], t["incremental"], t["captum"]) or (
            chosen <= 1.05 * min(t["full"], t["captum"])
        )
        print(
            f"| {name} | {window} ({r['windows']}) | {t['incremental'] * 1e3:.1f} | "
            f"{t['full'] * 1e3:.1f} | {t['captum'] * 1e3:.1f} | "
            f"{t['captum'] / t['incremental']:.2f}x | {speedup:.2f}x | "
            f"{inc / 1e9:.2f} / {full / 1e9:.2f} ({ratio:.2f}x) | {speedup / ratio:.0%} | "
            f"{moved / 1e6:.2f} M | {predicted:.2f}x | {r['auto']} | "
            f"{'yes' if auto_ok else 'NO'} | {r['error']:.1e} |",
            flush=True,
        )

    if args.fit:
        fit(measured)


def fit(measured: list[tuple[float, dict[str, object]]]) -> None:
    """Refit PATCH_PENALTY, ELEMENT_COST, MOVE_COST, OP_COST to the measured speed-ups."""
    import numpy as np
    from scipy.optimize import minimize

    names = ("PATCH_PENALTY", "ELEMENT_COST", "MOVE_COST", "OP_COST")
    start = np.log([getattr(cost, n) for n in names])

    def loss(logs: np.ndarray) -> float:
        p, e, m, o = np.exp(logs)
        total = 0.0
        for speedup, r in measured:
            inc, full = r["macs"]  # type: ignore[misc]
            ei, ef = r["elements"]  # type: ignore[misc]
            ops = r["operations"]
            predicted = (full + e * ef) / (p * inc + e * ei + m * r["moved"] + o * ops)  # type: ignore[operator]
            total += float(np.log(predicted / speedup) ** 2)
        return total

    best = minimize(loss, start, method="Nelder-Mead", options={"maxiter": 4000})
    fitted = ", ".join(f"{n} = {v:.3g}" for n, v in zip(names, np.exp(best.x), strict=True))
    print(
        f"refitted cost model ({len(measured)} sweeps, log-squared error {best.fun:.3f}): {fitted}"
    )


if __name__ == "__main__":
    main()
