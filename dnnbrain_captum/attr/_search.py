"""Search machinery shared by the minimal-image classes (parcels and components).

An *element* is a parcel (a set of pixels) or a component (an image pattern). A *selection* is a
boolean vector over an example's elements; a ``compose`` function turns selections into images.
Everything here is torch only and batched: candidates of every example are scored together,
``perturbations_per_eval`` images per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.baselines import baseline_images
from dnnbrain_captum._utils.caller import warn_at_caller
from dnnbrain_captum._utils.layouts import ReshapeTransform
from dnnbrain_captum._utils.targets import (
    channel_maps,
    evaluate_target,
    layer_output,
    per_example_targets,
    reduce_per_example,
    take_examples,
)
from dnnbrain_captum._utils.validation import positive_int

__all__ = [
    "ACTIVATION_CRITERIA",
    "SEARCHES",
    "Composer",
    "TargetScorer",
    "check_batch_size",
    "check_ratio",
    "fill_images",
    "plateau_index",
    "prefix_search",
    "LocalRemovals",
    "removal_search",
    "score_selections",
]

ACTIVATION_CRITERIA = ("max", "mean", "median", "L1", "L2")
SEARCHES = ("max", "fitting_curve", "threshold", "removal")

# compose(example indices (B,), selections (B, K) bool) -> images (B, C, H, W)
Composer = Callable[[Tensor, Tensor], Tensor]


def check_ratio(value: Any, name: str) -> float:
    """``value`` as a float strictly between 0 and 1, else ``ValueError``/``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return float(value)


def check_batch_size(value: Any) -> int:
    """``perturbations_per_eval`` as an int >= 1, else ``ValueError``."""
    return positive_int(value, "perturbations_per_eval")


def fill_images(x: Tensor, baselines: Any) -> Tensor:
    """What removed pixels show, broadcastable to ``x`` with batch size 1 or N.

    ``baselines`` is a number (model space), ``"mean"`` (each image's per-channel mean) or a
    tensor broadcastable to ``x`` (with 1 or N examples).
    """
    return baseline_images(x, baselines, {"mean": lambda x: x.mean(dim=(2, 3), keepdim=True)})


class TargetScorer:
    """One scalar per image: the target's activation under ``activation_criterion``.

    For a channel target of a layer the channel's values are pooled by the criterion
    (``max``, ``mean``, ``median`` or the vector norms ``L1`` = Σ|a| and ``L2`` = sqrt(Σa²)).
    A unit, a callable or a model-output target is already one value per example, and the
    criterion does not apply.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | None,
        target: Any,
        criterion: str,
        additional_forward_args: Any,
        n: int,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        if criterion not in ACTIVATION_CRITERIA:
            raise ValueError(
                f"activation_criterion must be one of {ACTIVATION_CRITERIA}, got {criterion!r}"
            )
        self.forward_func = forward_func
        self.layer = layer
        self.target = target
        self.criterion = criterion
        self.args = additional_forward_args
        self.n = n
        self.reshape_transform = reshape_transform
        self.entries = per_example_targets(target, n)
        is_unit = isinstance(target, tuple) or bool(
            self.entries and isinstance(self.entries[0], (tuple, list))
        )
        self.pools_channel = (
            layer is not None
            and not (callable(target) and not isinstance(target, Tensor))
            and not is_unit
            and criterion not in ("mean", "max")
        )

    def __call__(self, images: Tensor, example: Tensor) -> Tensor:
        """Activation of ``images`` (B, C, H, W), image b explaining example ``example[b]``."""
        target = self.target
        if self.entries is not None:
            target = [self.entries[k] for k in example.tolist()]
        args = take_examples(self.args, example, self.n)
        if self.pools_channel:
            assert self.layer is not None
            output = layer_output(
                self.forward_func, self.layer, (images,), args, self.reshape_transform
            )
            return reduce_per_example(channel_maps(output, target), self.criterion)
        reduction = self.criterion if self.criterion in ("mean", "max") else "mean"
        return evaluate_target(
            self.forward_func,
            self.layer,
            (images,),
            target,
            reduction,
            args,
            reshape_transform=self.reshape_transform,
        )


def score_selections(
    score: TargetScorer,
    compose: Composer,
    example: Tensor,
    selection: Tensor,
    batch: int,
    bar: Any,
) -> Tensor:
    """Score every (example, selection) job, ``batch`` images per forward pass.

    Returns
    -------
    Tensor of shape (J,)
    """
    values = []
    for start in range(0, example.shape[0], batch):
        e = example[start : start + batch]
        values.append(score(compose(e, selection[start : start + batch]), e))
        bar.update(e.shape[0])
    if not values:
        return torch.empty(0)
    return torch.cat(values)


def plateau_index(curve: Tensor, tolerance: float = 0.05) -> int:
    """0-based index of the smallest prefix reaching the fitted plateau of ``curve``.

    ``curve[k]`` is the activation of the first k + 1 elements; its running maximum
    ``best[k] = max(curve[:k + 1])`` (the best activation reachable with at most k + 1
    elements) is fitted by least squares with the saturating exponential
    ``f(k) = c + A·(1 − exp(−k / τ))`` (τ on a log grid of 200 values from 0.1 to K, c and A
    exact for each τ). The plateau level is ``c + (1 − tolerance)·A`` and the answer is the
    first k whose observed activation reaches it (the arg-max if none does); a flat curve
    (A <= 0) gives 0 (one element). Curves of fewer than 3 points use the arg-max. Ties go to
    the smaller index.

    Examples
    --------
    >>> plateau_index(torch.tensor([1.0, 2.5, 3.0, 3.0, 3.0, 3.0]))
    2
    """
    k_total = curve.shape[0]
    values = curve.detach().to("cpu", torch.float64)
    if k_total < 3:
        return int(values.argmax())
    envelope = values.cummax(0).values
    k = torch.arange(k_total, dtype=torch.float64)
    taus = torch.logspace(math.log10(0.1), math.log10(k_total), 200, dtype=torch.float64)
    g = 1.0 - torch.exp(-k[None, :] / taus[:, None])  # (T, K)
    g_mean = g.mean(1, keepdim=True)
    y_mean = envelope.mean()
    gc = g - g_mean
    var = gc.pow(2).sum(1)
    rise = (gc * (envelope - y_mean)[None, :]).sum(1) / var.clamp_min(1e-300)
    offset = y_mean - rise * g_mean[:, 0]
    residual = (envelope[None, :] - offset[:, None] - rise[:, None] * g).pow(2).sum(1)
    best = int(residual.argmin())
    c, a = float(offset[best]), float(rise[best])
    if a <= 0:
        return 0
    hits = torch.nonzero(values >= c + (1.0 - tolerance) * a)
    if hits.numel() == 0:
        return int(values.argmax())
    return int(hits[0, 0])


def _warn_non_positive(examples: list[int], values: Tensor, what: str) -> None:
    shown = ", ".join(f"{k} ({float(values[k]):.4g})" for k in examples[:5])
    warn_at_caller(
        f"the original activation is not positive for example(s) {shown}: a fraction of it is "
        f"no reduction, so {what}",
    )


def prefix_search(
    score: TargetScorer,
    compose: Composer,
    counts: list[int],
    original: Tensor,
    criterion: str,
    ratio: float,
    max_elements: int | None,
    batch: int,
    bar: Any,
) -> tuple[Tensor, Tensor]:
    """Rank elements by their activation alone, then pick a prefix of the ranking.

    Parameters
    ----------
    counts : list of int
        Number of elements of each example.
    original : Tensor of shape (N,)
        Activation of the original images (for ``criterion="threshold"``).
    criterion : {"max", "fitting_curve", "threshold"}
        How the prefix is chosen (see :class:`MinimalParcelImage`).

    Returns
    -------
    selection : Tensor of shape (N, K_max), bool
        The chosen elements.
    activation : Tensor of shape (N,)
        Activation of the chosen prefix.
    """
    n, k_max = len(counts), max(counts)
    device = original.device
    # 1. Each element alone.
    example = torch.cat([torch.full((c,), e, dtype=torch.long) for e, c in enumerate(counts)])
    element = torch.cat([torch.arange(c) for c in counts])
    single = torch.zeros(example.shape[0], k_max, dtype=torch.bool)
    single[torch.arange(example.shape[0]), element] = True
    alone = score_selections(
        score, compose, example.to(device), single.to(device), batch, bar
    ).cpu()
    # 2. Prefixes of the ranking (descending; ties keep the lower element index).
    orders, lengths, jobs_e, jobs_s = [], [], [], []
    offset = 0
    for e, c in enumerate(counts):
        order = torch.argsort(-alone[offset : offset + c].double(), stable=True)
        offset += c
        length = c if max_elements is None else min(c, max_elements)
        ranks = torch.empty(c, dtype=torch.long)
        ranks[order] = torch.arange(c)
        prefixes = torch.zeros(length, k_max, dtype=torch.bool)
        prefixes[:, :c] = ranks[None, :] <= torch.arange(length)[:, None]
        orders.append(order)
        lengths.append(length)
        jobs_e.append(torch.full((length,), e, dtype=torch.long))
        jobs_s.append(prefixes)
    selections = torch.cat(jobs_s)
    curves = score_selections(
        score, compose, torch.cat(jobs_e).to(device), selections.to(device), batch, bar
    ).cpu()
    # 3. Choose a prefix per example.
    chosen = torch.zeros(n, k_max, dtype=torch.bool)
    activation = torch.empty(n, dtype=curves.dtype)
    non_positive: list[int] = []
    offset = 0
    for e, length in enumerate(lengths):
        curve = curves[offset : offset + length]
        if criterion == "max":
            index = int(curve.argmax())
        elif criterion == "fitting_curve":
            index = plateau_index(curve)
        else:
            level = ratio * float(original[e])
            hits = torch.nonzero(curve >= level)
            if float(original[e]) <= 0:
                non_positive.append(e)
                index = int(curve.argmax())
            elif hits.numel() == 0:
                index = int(curve.argmax())
            else:
                index = int(hits[0, 0])
        chosen[e] = selections[offset + index]
        activation[e] = curve[index]
        offset += length
    if non_positive:
        _warn_non_positive(non_positive, original, "the best prefix ('max') is returned")
    return chosen.to(device), activation.to(device)


# local(example, kept (K,) bool, members (M,) long) -> (values (M,), computed (M,) bool): the
# target's value with each member removed from the kept elements, for the members it computed
# (an incremental path); the others are scored through ``compose`` and the scorer.
LocalRemovals = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


def removal_search(
    score: TargetScorer,
    compose: Composer,
    counts: list[int],
    original: Tensor,
    ratio: float,
    batch: int,
    bar: Any,
    candidates: int | None = None,
    local: LocalRemovals | None = None,
) -> tuple[Tensor, Tensor]:
    """Backward elimination (Zhou et al. 2015): drop the element whose removal costs least.

    Starting from all elements, each round scores one-element removals of the current
    selection (all examples together, ``batch`` images per forward pass) and removes the
    element leaving the highest activation (ties, up to floating-point rounding: the lower
    element index; :func:`_best`), as long as that activation stays ``>= ratio × original``.

    ``candidates=None`` scores every kept element in every round (O(K²) evaluations). With
    ``candidates=c`` a round scores only the ``c`` kept elements whose removal left the highest
    activation when last scored (the first round scores all of them, so this is the ranking
    by removal cost; ties: the lower index). When none of those stays above the threshold,
    the next round scores every kept element before the search stops, so the result is
    always *locally minimal*: removing any single further element drops the activation below
    the threshold.

    ``local``, when given, is asked first for each example's candidates of a round (an
    incremental path, :class:`~dnnbrain_captum.attr._incremental.regions.ParcelRemovals`);
    the candidates it leaves are scored by full forward passes, batched over examples.

    Returns
    -------
    selection : Tensor of shape (N, K_max), bool
    activation : Tensor of shape (N,)
    """
    n, k_max = len(counts), max(counts)
    current = torch.zeros(n, k_max, dtype=torch.bool)
    for e, c in enumerate(counts):
        current[e, :c] = True
    last = torch.full((n, k_max), math.inf, dtype=torch.float64)  # never scored: try first
    activation = original.detach().cpu().clone()
    positive = [e for e in range(n) if float(original[e]) > 0]
    if len(positive) < n:
        _warn_non_positive(
            [e for e in range(n) if e not in positive], original, "all elements are kept"
        )
    full = dict.fromkeys(positive, True)  # examples whose next round scores every element
    while full:
        owners, complete = [], []
        for e, everything in full.items():
            members = torch.nonzero(current[e])[:, 0]
            complete.append(everything or candidates is None or members.shape[0] <= candidates)
            if not complete[-1]:
                order = torch.argsort(-last[e, members], stable=True)
                members = members[order[:candidates]].sort().values
            owners.append(members)
        scores = _round_scores(
            score, compose, list(full), owners, current, (batch, original.device), bar, local
        )
        following: dict[int, bool] = {}
        for e, members, scored_all, part in zip(full, owners, complete, scores, strict=True):
            last[e, members] = part.double()
            best = _best(part, float(original[e]))
            if float(part[best]) >= ratio * float(original[e]):
                current[e, members[best]] = False
                activation[e] = part[best]
                if bool(current[e].any()):
                    following[e] = False
            elif not scored_all:
                following[e] = True  # confirm with every element before stopping
        full = following
    device = original.device
    return current.to(device), activation.to(device=device, dtype=original.dtype)


def _best(values: Tensor, original: float) -> int:
    """Index of the highest value; values within rounding of it count as ties (lowest index).

    Rounding: 64 units in the last place of the values' dtype, relative to the larger of the
    highest value and the original activation; so that paths computing the same activations
    in a different order (incremental inference, other batch sizes) choose the same element.

    Examples
    --------
    >>> _best(torch.tensor([1.0, 2.0, 2.0 + 1e-7, 0.5]), 2.0)
    1
    """
    top = values.max()
    scale = max(abs(float(top)), abs(original))
    tolerance = 64 * torch.finfo(values.dtype).eps * scale
    return int(torch.nonzero(values >= top - tolerance)[0, 0])


def _round_scores(
    score: TargetScorer,
    compose: Composer,
    examples: list[int],
    owners: list[Tensor],
    current: Tensor,
    batching: tuple[int, torch.device],
    bar: Any,
    local: LocalRemovals | None,
) -> list[Tensor]:
    """One round's values: per example, its selection without each of its members (M_e,).

    ``batching``: images per forward pass of the full path, and the device of the images.
    """
    batch, device = batching
    values: list[Tensor] = []
    computed: list[Tensor] = []
    for e, members in zip(examples, owners, strict=True):
        if local is None:
            computed.append(torch.zeros(members.shape[0], dtype=torch.bool))
            values.append(torch.zeros(members.shape[0]))
            continue
        part, done = local(e, current[e], members)
        bar.update(int(done.sum()))
        values.append(part)
        computed.append(done)
    jobs_e, jobs_s = [], []
    for e, members, done in zip(examples, owners, computed, strict=True):
        rest = members[~done]
        options = current[e].repeat(rest.shape[0], 1)
        options[torch.arange(rest.shape[0]), rest] = False
        jobs_e.append(torch.full((rest.shape[0],), e, dtype=torch.long))
        jobs_s.append(options)
    rest_values = score_selections(
        score, compose, torch.cat(jobs_e).to(device), torch.cat(jobs_s).to(device), batch, bar
    ).cpu()
    offset = 0
    for k, done in enumerate(computed):
        count = int((~done).sum())
        if count:
            part = values[k].to(rest_values.dtype)
            part[~done] = rest_values[offset : offset + count]
            values[k] = part
        offset += count
    return values
