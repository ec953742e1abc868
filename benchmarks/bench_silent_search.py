"""Can the data-silent channels of the digits CNN fire? A search for images that make them fire.

Run from the repository root (CPU; about 1–4 minutes per channel on one loaded core)::

    OMP_NUM_THREADS=1 python benchmarks/bench_silent_search.py
        [--channels open|hard|all|conv4_relu:60,...] [--steps 400] [--batch 256] [--seed 0]
        [--save benchmarks/results/silent_channel_images.pt]

The bundled digits CNN (:mod:`dnnbrain_captum.models.digits`) takes 3×32×32 images in [0, 1]
with no normalisation. 53 of its post-ReLU conv channels are exactly 0 on every held-out digit.
``bench_synthesis.py --silent`` found images firing 42 of them; 11 stayed open (best
pre-activation < 0, CROWN bound far above 0) and 12 more fire under a hard search only. This
script searches, per channel, for a valid image (every value in [0, 1]) that makes *some unit*
of the channel's pre-activation strictly positive:

* **Per-unit targets.** Batch element ``k`` maximises the pre-activation of one unit, ``k mod
  (H·W)``, so every unit (corners and borders included: their zero padding removes taps) gets
  ``batch / (H·W)`` restarts. Starts: uniform noise, grey 0.5, random binary {0, 1} images
  and blocky noise (an 8×8 noise image upsampled), each kind for a quarter of the batch, so
  with ``batch`` = 256 each conv4/conv5 unit (8×8 map) gets one start of each kind.
* **Continuation.** Every ReLU below the target is replaced by ``softplus(β)``, β annealed
  geometrically from ``beta0`` to 100 over the first 70 % of the steps (a dead unit at a
  positive-weight position still passes gradient), then the true ReLU for the rest.
* **Projected steps in pixel space.** ``sign`` steps ``x += lr·sign(∇)`` (conv1–conv4) or Adam
  (conv5, where sign steps stall), then clamp to [0, 1]; lr cosine-decayed.
* The best image of every restart is tracked on the **true** network at every step.

Found images are quantised to uint8 (``image = u8 / 255``) and kept only if the quantised image
still fires the channel in float32 and float64 (plain forward of ``model.features``, no hooks).
``--save`` writes ``{"conv4_relu:1": uint8 tensor (3, 32, 32), ...}``;
``tests/test_silent_channels_fire.py`` checks every saved image in CI.

Printed table per channel: best pre-activation reached (true network, float32), its unit
``(row, col)``, restarts ending > 0, first step at which some restart was > 0, seconds.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnnbrain_captum import digits_cnn

# index of each convolution in ``DigitsCNN.features``
CONV_INDEX = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}
# never reached by ``bench_synthesis.py --silent`` (best pre-activation < 0)
OPEN = (
    "conv4_relu:1,conv4_relu:3,conv4_relu:42,conv4_relu:44,conv4_relu:60,"
    "conv5_relu:6,conv5_relu:7,conv5_relu:33,conv5_relu:38,conv5_relu:45,conv5_relu:46"
)
# reached by the hard search of ``bench_synthesis.py --silent`` but not reliably by the default
HARD = (
    "conv3_relu:10,conv3_relu:23,conv3_relu:39,conv4_relu:4,conv4_relu:7,conv4_relu:25,"
    "conv4_relu:36,conv4_relu:55,conv5_relu:16,conv5_relu:19,conv5_relu:31,conv5_relu:39"
)


@dataclass
class Settings:
    """One search's settings (see the module docstring)."""

    steps: int = 400
    batch: int = 256
    seed: int = 0
    mode: str = "sign"  # "sign" or "adam"
    lr: float = 0.05
    beta0: float = 1.0
    beta1: float = 100.0
    surrogate_fraction: float = 0.7


def default_settings(layer: str, steps: int, batch: int, seed: int) -> Settings:
    """The settings this script uses for ``layer`` (Adam at conv5, sign steps below)."""
    if layer == "conv5":
        return Settings(steps, batch, seed, mode="adam", lr=0.02, beta0=5.0)
    return Settings(steps, batch, seed)


def forward_to(features: nn.Sequential, x: Tensor, stop: int, beta: float | None) -> Tensor:
    """``features[: stop + 1](x)`` with every ReLU replaced by ``softplus(beta)`` if ``beta``.

    Parameters
    ----------
    features : nn.Sequential
        ``DigitsCNN.features``.
    x : Tensor of shape (N, 3, 32, 32)
    stop : int
        Index of the last layer applied (a convolution: its pre-activation is returned).
    beta : float or None
        Softplus sharpness; None applies the true ReLU.

    Returns
    -------
    Tensor of shape (N, C, H, W)
    """
    h = x
    for layer in features[: stop + 1]:
        if isinstance(layer, nn.ReLU):
            h = F.softplus(h, beta=beta) if beta else F.relu(h)
        else:
            h = layer(h)
    return h


def starting_images(batch: int, generator: torch.Generator, size: int = 32) -> Tensor:
    """Noise, grey, random binary and blocky starts; shape (batch, 3, size, size).

    The kinds come in four consecutive blocks of ``batch / 4``, so with per-unit targets cycled
    over the units (:func:`search`) and ``batch`` a multiple of 4 × the number of units, every
    unit gets every kind of start.
    """
    x = torch.rand(batch, 3, size, size, generator=generator)
    kind = torch.arange(batch) * 4 // batch
    x[kind == 1] = 0.5
    n2, n3 = int((kind == 2).sum()), int((kind == 3).sum())
    x[kind == 2] = (torch.rand(n2, 3, size, size, generator=generator) > 0.5).float()
    blocky = torch.rand(n3, 3, size // 4, size // 4, generator=generator)
    x[kind == 3] = F.interpolate(blocky, size=size, mode="nearest")
    return x


@dataclass
class Found:
    """A search's outcome for one channel."""

    best: float  # largest true pre-activation reached, float32
    unit: tuple[int, int]
    positive_restarts: int
    first_positive_step: int | None
    seconds: float
    images: Tensor  # (batch, 3, 32, 32), every restart's best image
    scores: Tensor  # (batch,), their true pre-activations
    units: Tensor  # (batch, 2), the unit each restart targets
    kinds: Tensor | None = None  # (batch,), 0 noise, 1 grey, 2 binary, 3 blocky start


def search(
    features: nn.Sequential,
    layer: str,
    channel: int,
    cfg: Settings,
    starts: Tensor | None = None,
    units: Tensor | None = None,
) -> Found:
    """Maximise one unit's pre-activation per restart (see the module docstring).

    Parameters
    ----------
    features : nn.Sequential
        ``DigitsCNN.features`` (parameters not modified).
    layer : str
        ``"conv1"`` … ``"conv5"``.
    channel : int
    cfg : Settings
    starts : Tensor of shape (batch, 3, S, S), optional
        Start images (default: :func:`starting_images`, 32×32); S < 32 searches image crops.
    units : Tensor of shape (batch, 2), optional
        The unit ``(row, col)`` each restart targets (default: every unit in turn).

    Returns
    -------
    Found
    """
    stop = CONV_INDEX[layer]
    g = torch.Generator().manual_seed(cfg.seed)
    x = (starting_images(cfg.batch, g) if starts is None else starts.clone()).requires_grad_(True)
    side = x.shape[-1] // {0: 1, 3: 2}.get(stop, 4)
    rows = torch.arange(cfg.batch)
    if units is None:
        units = torch.stack([(rows % side**2) // side, rows % side], 1)
    ui, uj = units[:, 0], units[:, 1]
    best = torch.full((cfg.batch,), -math.inf)
    best_x = x.detach().clone()
    adam = torch.optim.Adam([x], lr=cfg.lr) if cfg.mode == "adam" else None
    n_surrogate = int(cfg.steps * cfg.surrogate_fraction)
    first: int | None = None
    start = time.perf_counter()
    for step in range(cfg.steps + 1):
        beta = None
        if step < n_surrogate:
            beta = cfg.beta0 * (cfg.beta1 / cfg.beta0) ** (step / max(n_surrogate - 1, 1))
        pre = forward_to(features, x, stop, beta)[rows, channel, ui, uj]
        with torch.no_grad():
            true = pre.detach() if beta is None else forward_to(features, x, stop, None)
            true = true if beta is None else true[rows, channel, ui, uj]
            better = true > best
            best = torch.where(better, true, best)
            best_x[better] = x.detach()[better]
            if first is None and bool((true > 0).any()):
                first = step
        if step == cfg.steps:
            break
        (grad,) = torch.autograd.grad(pre.sum(), x)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) + 1e-3
        with torch.no_grad():
            if adam is None:
                x += lr * grad.sign()
            else:
                x.grad = -grad
                adam.param_groups[0]["lr"] = lr
                adam.step()
            x.clamp_(0, 1)
    k = int(best.argmax())
    return Found(
        best=float(best[k]),
        unit=(int(ui[k]), int(uj[k])),
        positive_restarts=int((best > 0).sum()),
        first_positive_step=first,
        seconds=time.perf_counter() - start,
        images=best_x,
        scores=best,
        units=torch.stack([ui, uj], 1),
        kinds=torch.arange(cfg.batch) * 4 // cfg.batch if starts is None else None,
    )


# a corner unit depends only on an S×S image corner (receptive field clipped by the padding)
CORNER_CROP = {"conv3": 12, "conv4": 16, "conv5": 20}


def best_corner(found: Found, side: int) -> tuple[int, int]:
    """The map corner ``(row, col)`` whose restarts reached the largest pre-activation."""
    corners = [(0, 0), (0, side - 1), (side - 1, 0), (side - 1, side - 1)]
    scores = []
    for corner in corners:
        at = (found.units == torch.tensor(corner)).all(1)
        scores.append(float(found.scores[at].max()) if bool(at.any()) else -math.inf)
    return corners[max(range(4), key=scores.__getitem__)]


def corner_hop(
    features: nn.Sequential,
    layer: str,
    channel: int,
    cfg: Settings,
    corner: tuple[int, int],
    rounds: int,
) -> Found:
    """Basin hopping on one corner unit, on image crops (exact: the unit sees only the crop).

    Round 0: :func:`search` from ``cfg.batch`` crop starts. Each next round keeps the best 64
    crops, makes ``cfg.batch / 64`` copies of each with a random 3–8 pixel square reset to a
    random binary pattern, and re-optimises them for 150 steps (β 10 → 100 over half, then the
    true ReLU). The returned images are full 32×32 frames (the crop at ``corner``, grey
    elsewhere); their scores are checked by the full-frame forward.
    """
    crop = CORNER_CROP[layer]
    far = crop // 4 - 1
    target = torch.tensor([far if corner[0] else 0, far if corner[1] else 0])
    g = torch.Generator().manual_seed(cfg.seed + 1)
    units = target.expand(cfg.batch, 2)
    start = time.perf_counter()
    found = search(features, layer, channel, cfg, starting_images(cfg.batch, g, crop), units)
    pool_x, pool_s, first = found.images, found.scores, found.first_positive_step
    again = Settings(150, cfg.batch, cfg.seed, cfg.mode, cfg.lr, 10.0, cfg.beta1, 0.5)
    for _ in range(rounds):
        top = pool_s.argsort(descending=True)[:64]
        x0 = pool_x[top].repeat(cfg.batch // 64, 1, 1, 1)
        for i in range(cfg.batch):
            b = int(torch.randint(3, 9, (1,), generator=g))
            r, c = torch.randint(0, crop - b + 1, (2,), generator=g).tolist()
            x0[i, :, r : r + b, c : c + b] = (torch.rand(3, b, b, generator=g) > 0.5).float()
        nxt = search(features, layer, channel, again, x0, units)
        pool_x, pool_s = torch.cat([pool_x[top], nxt.images]), torch.cat([pool_s[top], nxt.scores])
    frames = torch.full((len(pool_x), 3, 32, 32), 0.5)
    r0, c0 = (32 - crop) * (corner[0] > 0), (32 - crop) * (corner[1] > 0)
    frames[:, :, r0 : r0 + crop, c0 : c0 + crop] = pool_x
    with torch.no_grad():
        scores = forward_to(features, frames, CONV_INDEX[layer], None)[:, channel]
        scores = scores[:, corner[0], corner[1]]
    k = int(scores.argmax())
    return Found(
        best=float(scores[k]),
        unit=corner,
        positive_restarts=int((scores > 0).sum()),
        first_positive_step=first,
        seconds=time.perf_counter() - start,
        images=frames,
        scores=scores,
        units=torch.tensor(corner).expand(len(frames), 2),
    )


def fires(features: nn.Sequential, layer: str, channel: int, image: Tensor) -> tuple[float, float]:
    """Largest pre-activation over the channel's units, float32 and float64 (true network).

    Parameters
    ----------
    image : Tensor of shape (3, 32, 32), values in [0, 1]

    Returns
    -------
    (float, float)
    """
    stop = CONV_INDEX[layer]
    out = []
    for dtype in (torch.float32, torch.float64):
        net = features[: stop + 1].to(dtype)
        with torch.no_grad():
            out.append(float(net(image[None].to(dtype))[0, channel].max()))
        features.float()
    return out[0], out[1]


def quantised_winner(
    features: nn.Sequential, layer: str, channel: int, found: Found
) -> Tensor | None:
    """The positive restart whose uint8-quantised image fires best in float32 and float64."""
    best_u8, best_val = None, 0.0
    for k in torch.argsort(found.scores, descending=True)[:32].tolist():
        if found.scores[k] <= 0:
            break
        u8 = (found.images[k] * 255).round().to(torch.uint8)
        v32, v64 = fires(features, layer, channel, u8.float() / 255)
        if min(v32, v64) > best_val:
            best_u8, best_val = u8, min(v32, v64)
    return best_u8


def parse_channels(spec: str) -> list[tuple[str, int]]:
    """``"open"``, ``"hard"``, ``"all"`` or ``"conv4_relu:60,conv5_relu:6"`` → [(conv, channel)]."""
    spec = {"open": OPEN, "hard": HARD, "all": OPEN + "," + HARD}.get(spec, spec)
    out = []
    for item in spec.split(","):
        name, channel = item.split(":")
        conv = name.removesuffix("_relu")
        if conv not in CONV_INDEX:
            raise ValueError(f"unknown layer {name!r} in --channels")
        out.append((conv, int(channel)))
    return out


def run_channel(
    features: nn.Sequential, conv: str, channel: int, args: argparse.Namespace
) -> tuple[Found, str]:
    """The per-unit search, then (``--hop``, if it did not fire) corner basin hopping."""
    cfg = default_settings(conv, args.steps, args.batch, args.seed)
    found = search(features, conv, channel, cfg)
    how = f"{cfg.mode} lr {cfg.lr}, β {cfg.beta0:g}→{cfg.beta1:g}, {cfg.steps} steps"
    if found.best <= 0 and args.hop > 0 and conv in CORNER_CROP:
        corner = best_corner(found, 8)
        spent = found.seconds
        found = corner_hop(features, conv, channel, cfg, corner, args.hop)
        found.seconds += spent
        how += f"; then corner {corner}, {args.hop} hops"
    return found, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="open", help="open | hard | all | conv4_relu:60,...")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hop", type=int, default=0, help="basin-hopping rounds if not fired")
    parser.add_argument("--save", type=Path, default=None, help="write the firing images (.pt)")
    args = parser.parse_args()
    torch.manual_seed(0)
    features = digits_cnn().features
    for p in features.parameters():
        p.requires_grad_(False)
    saved: dict[str, Tensor] = {}
    if args.save is not None and args.save.exists():
        saved = torch.load(args.save, weights_only=True)
    print(
        "| channel | settings | best pre-activation | unit | restarts > 0 | "
        "> 0 by start: noise/grey/binary/blocky | first step > 0 | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for conv, channel in parse_channels(args.channels):
        found, how = run_channel(features, conv, channel, args)
        name = f"{conv}_relu:{channel}"
        if found.best > 0 and args.save is not None and name not in saved:
            u8 = quantised_winner(features, conv, channel, found)
            if u8 is not None:
                saved[name] = u8
                args.save.parent.mkdir(parents=True, exist_ok=True)
                torch.save(saved, args.save)
        first = found.first_positive_step
        by_kind = "-"
        if found.kinds is not None:
            wins = [int((found.scores[found.kinds == k] > 0).sum()) for k in range(4)]
            by_kind = "/".join(map(str, wins))
        print(
            f"| {name} | {how} | {found.best:.4g} | {found.unit} | {found.positive_restarts}/"
            f"{len(found.scores)} | {by_kind} | {'-' if first is None else first} | "
            f"{found.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
