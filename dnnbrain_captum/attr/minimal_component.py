"""Minimal component image: the fewest PCA/ICA components that still drive the target."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from captum.log import log_usage
from torch import Tensor
from tqdm.auto import tqdm

from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.hooks import warn_if_training
from dnnbrain_captum._utils.validation import check_image_batch, positive_int
from dnnbrain_captum.attr._base import LayerPerturbation
from dnnbrain_captum.attr._search import (
    SEARCHES,
    Composer,
    TargetScorer,
    check_batch_size,
    check_ratio,
    prefix_search,
    removal_search,
)
from dnnbrain_captum.attr._sk_bridge import fit_components

__all__ = ["MinimalComponentImage", "MinimalComponents"]

DECOMPOSITIONS = ("pca", "ica")
SAMPLINGS = ("patches", "pixels")


class MinimalComponents(NamedTuple):
    """Result of :meth:`MinimalComponentImage.attribute`.

    Attributes
    ----------
    images : Tensor of shape (N, C, H, W)
        Reconstructions from the mean and the chosen components.
    selected : Tensor of shape (N, K), bool
        Chosen components, in the decomposition's order (PCA: by decreasing variance).
    n_selected : Tensor of shape (N,), long
        Number of components kept.
    activation : Tensor of shape (N,)
        The target's activation on the minimal image.
    original_activation : Tensor of shape (N,)
        The target's activation on the input image.
    full_reconstruction : Tensor of shape (N, C, H, W)
        The image rebuilt from all K components (the input itself, up to rounding, with the
        default K).
    """

    images: Tensor
    selected: Tensor
    n_selected: Tensor
    activation: Tensor
    original_activation: Tensor
    full_reconstruction: Tensor


def numerical_rank(samples: Tensor) -> int:
    """Fewest dimensions spanned by every example's centred samples (N, L, D), at least 1.

    A singular value counts when it exceeds ``s_max · max(L, D) · eps`` with ``eps`` the
    machine precision of the samples' dtype (numpy's ``matrix_rank`` rule): directions below
    that are rounding noise, which PCA would rank at random and FastICA cannot whiten.
    """
    centred = samples.detach().to("cpu", torch.float64)
    centred = centred - centred.mean(1, keepdim=True)
    values = torch.linalg.svdvals(centred)  # (N, min(L, D)), descending
    dtype = samples.dtype if samples.is_floating_point() else torch.float32
    tolerance = values[:, :1] * max(samples.shape[1:]) * torch.finfo(dtype).eps
    return max(int((values > tolerance).sum(1).min()), 1)


class _Decomposition:
    """Per-example samples ≈ mean + coefficients @ basis, and the way back to images."""

    def __init__(
        self,
        x: Tensor,
        method: str,
        sampling: str,
        patch: int,
        n_components: int | None,
        seed: int,
    ) -> None:
        n, c, h, w = x.shape
        self.shape = (c, h, w)
        self.sampling = sampling
        self.patch = patch
        if sampling == "patches":
            self.padded = (-(-h // patch) * patch, -(-w // patch) * patch)
            pad = (0, self.padded[1] - w, 0, self.padded[0] - h)
            tiled = F.pad(x, pad, mode="replicate") if any(pad) else x
            samples = F.unfold(tiled, patch, stride=patch).transpose(1, 2)  # (N, L, C·p·p)
        else:
            samples = x.flatten(2).transpose(1, 2)  # (N, H·W, C)
        n_samples, n_features = samples.shape[1:]
        rank = min(n_samples - 1, n_features)
        k = n_components
        if k is None:
            k = numerical_rank(samples) if method == "ica" else rank
        if k < 2 or k > rank:
            spanned = f" (ICA's default: the {k} dimension(s) the samples span)" if k < 2 else ""
            raise ValueError(
                f"{sampling} give {n_samples} samples of {n_features} values, so 2 to {rank} "
                f"components are possible; n_components={n_components!r}{spanned} (a single "
                "component leaves nothing to search: use patches, a smaller patch_size or a "
                "larger image)"
            )
        fits = [fit_components(samples[e], method, k, seed) for e in range(n)]
        self.mean = torch.stack([f[0] for f in fits])  # (N, D)
        self.basis = torch.stack([f[1] for f in fits])  # (N, K, D)
        self.coefficients = torch.stack([f[2] for f in fits])  # (N, L, K)
        self.k = k

    def compose(self, example: Tensor, selection: Tensor) -> Tensor:
        """Images rebuilt from the mean and the selected components (B, C, H, W)."""
        weights = self.coefficients[example] * selection[:, None, :].to(self.mean.dtype)
        samples = self.mean[example][:, None, :] + weights @ self.basis[example]  # (B, L, D)
        c, h, w = self.shape
        if self.sampling == "pixels":
            return samples.transpose(1, 2).reshape(-1, c, h, w)
        images = F.fold(samples.transpose(1, 2), self.padded, self.patch, stride=self.patch)
        return images[:, :, :h, :w]


@captum_keyword_aliases
class MinimalComponentImage(LayerPerturbation):
    """Minimal image over image components: the fewest PCA/ICA components that drive the target.

    Each image is decomposed on its own into K components (scikit-learn PCA or FastICA) and
    the same searches as :class:`MinimalParcelImage` run over components instead of parcels;
    a selection of components is turned back into an image by reconstruction, so removed
    components fall back to the mean rather than to a fill colour.

    Design. Components come from ``sampling``:

    * ``"patches"`` (default): the image is cut into non-overlapping ``patch_size`` ×
      ``patch_size`` tiles (edges padded by replication, cropped after reconstruction); each
      tile (C·p·p values) is a sample. A component is a tile pattern — brightness, a colour,
      an edge at some orientation, a texture — present across the whole image with a
      per-tile weight. The minimal image answers "which kinds of local structure does the
      unit need?" (e.g. are the coarse, high-variance PCA components enough, or does it need
      fine edges?).
    * ``"pixels"``: each pixel (C values) is a sample, so components are colour axes
      (for RGB PCA, roughly luminance and two opponent axes). The minimal image answers
      "which colour dimensions does the unit need?".

    Image k of the ranking is ``mean + coefficients_k ⊗ component_k`` (one component over
    the mean tile or colour); its activation ranks component k. By default K is the full
    rank ``min(L − 1, D)`` (L samples of D values) for PCA and the numerical rank of the
    samples for ICA (the fewest over the batch; directions whose singular value is below
    ``s_max · max(L, D) · eps`` are rounding noise, which FastICA cannot whiten), so all
    components reconstruct the image exactly. PCA components are ordered by variance, ICA
    components (FastICA, ``whiten="unit-variance"``, seeded) are unordered. The numpy round-trip for
    scikit-learn is confined to ``dnnbrain_captum.attr._sk_bridge``; reconstruction and
    search run in torch on the input's device.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module, str or None
        The layer whose channel or unit is explained (module, path or DNNBrain alias); None
        explains the model output with Captum's target.

    References
    ----------
    .. [1] Ullman, S., Assif, L., Fetaya, E., Harari, D. (2016). Atoms of recognition in human
       and computer vision. PNAS 113(10), 2744–2749.
    .. [2] Hyvärinen, A., Oja, E. (2000). Independent component analysis: algorithms and
       applications. Neural Networks 13(4–5), 411–430.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn, digits_images
    >>> images, labels = digits_images(n=2)
    >>> out = MinimalComponentImage(digits_cnn()).attribute(
    ...     images, target=labels, patch_size=4, search_criterion="threshold")
    >>> tuple(out.images.shape), tuple(out.selected.shape)
    ((2, 3, 32, 32), (2, 48))
    >>> bool((out.activation >= 0.9 * out.original_activation).all())
    True
    """

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        decomposition: str = "pca",
        sampling: str = "patches",
        patch_size: int = 8,
        n_components: int | None = None,
        search_criterion: str = "removal",
        activation_criterion: str = "max",
        activation_ratio: float = 0.9,
        max_components: int | None = None,
        candidates_per_step: int | None = 16,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        seed: int = 0,
    ) -> MinimalComponents:
        """Minimal component images of ``target``.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W)
            Model-ready images.
        target : int, tuple, callable, list or Tensor
            With a layer: channel, unit ``(c, i, j)``, callable or one per example (0-based).
            Without a layer: Captum's target on the model output.
        additional_forward_args : Any, optional
            Further positional arguments of the model.
        decomposition : {"pca", "ica"}
            scikit-learn ``PCA`` or ``FastICA``.
        sampling : {"patches", "pixels"}
            What a sample is (class docstring).
        patch_size : int
            Tile side for ``"patches"``, >= 1.
        n_components : int, optional
            Components per image, 2 .. ``min(L − 1, D)``. Default: PCA the full rank
            ``min(L − 1, D)``; ICA the numerical rank of the samples (every direction they
            span beyond rounding; FastICA cannot whiten the others). Both reconstruct the
            image exactly.
        search_criterion : {"removal", "max", "fitting_curve", "threshold"}
            As in :class:`MinimalParcelImage` (default: backward elimination to
            ``activation_ratio`` of the original, a locally minimal set of components).
        activation_criterion : {"max", "mean", "median", "L1", "L2"}
            Pooling of a channel's values (vector norms for L1/L2).
        activation_ratio : float in (0, 1)
            Fraction of the original activation to keep (``"threshold"``, ``"removal"``).
        max_components : int, optional
            Longest prefix considered by the ranking searches.
        candidates_per_step : int or None
            Components scored per round of ``"removal"`` (as in :class:`MinimalParcelImage`),
            >= 1; None scores all of them every round.
        perturbations_per_eval : int
            Candidate images per forward pass.
        show_progress : bool
            Show a tqdm progress bar.
        seed : int
            FastICA's random state.

        Returns
        -------
        MinimalComponents
            ``(images, selected, n_selected, activation, original_activation,
            full_reconstruction)``.

        Raises
        ------
        ValueError
            Unknown decomposition, sampling, search or criterion; fewer than 2 possible
            components; ``activation_ratio`` outside (0, 1).
        """
        x = check_image_batch(inputs)
        _check_options(
            decomposition,
            sampling,
            search_criterion,
            patch_size,
            max_components,
            candidates_per_step,
            n_components,
        )
        ratio = check_ratio(activation_ratio, "activation_ratio")
        batch = check_batch_size(perturbations_per_eval)
        n = x.shape[0]
        score = TargetScorer(
            self.forward_func,
            self.layer,
            target,
            activation_criterion,
            additional_forward_args,
            n,
            self.reshape_transform,
        )
        parts = _Decomposition(x, decomposition, sampling, patch_size, n_components, seed)
        warn_if_training(self.forward_func)
        counts = [parts.k] * n
        bar = tqdm(desc="Minimal component image", disable=not show_progress, unit="image")
        everything = torch.arange(n, device=x.device)
        try:
            with torch.no_grad():
                original = score(x, everything)
                chosen, activation = _search(
                    score,
                    parts.compose,
                    counts,
                    original,
                    search_criterion,
                    ratio,
                    max_components,
                    candidates_per_step,
                    batch,
                    bar,
                )
                images = parts.compose(everything, chosen)
                full = parts.compose(everything, torch.ones_like(chosen))
        finally:
            bar.close()
        return MinimalComponents(
            images=images,
            selected=chosen,
            n_selected=chosen.sum(1),
            activation=activation.to(x.dtype),
            original_activation=original.to(x.dtype),
            full_reconstruction=full,
        )


def _check_options(
    decomposition: str,
    sampling: str,
    search_criterion: str,
    patch_size: int,
    max_components: int | None,
    candidates_per_step: int | None,
    n_components: int | None,
) -> None:
    """Refuse an unknown decomposition, sampling or search, or a malformed count
    (``ValueError``/``TypeError`` naming the value)."""
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if search_criterion not in SEARCHES:
        raise ValueError(f"search_criterion must be one of {SEARCHES}, got {search_criterion!r}")
    positive_int(patch_size, "patch_size")
    if max_components is not None:
        positive_int(max_components, "max_components")
    if candidates_per_step is not None:
        positive_int(candidates_per_step, "candidates_per_step")
    if n_components is not None and (
        isinstance(n_components, bool) or not isinstance(n_components, int)
    ):
        raise TypeError(f"n_components must be None or an int, got {n_components!r}")


def _search(
    score: TargetScorer,
    compose: Composer,
    counts: list[int],
    original: Tensor,
    search_criterion: str,
    ratio: float,
    max_components: int | None,
    candidates_per_step: int | None,
    batch: int,
    bar: Any,
) -> tuple[Tensor, Tensor]:
    """Run ``search_criterion`` over the components: the selection (N, K) bool and its
    activation (N,)."""
    if search_criterion == "removal":
        return removal_search(
            score,
            compose,
            counts,
            original,
            ratio,
            batch,
            bar,
            candidates_per_step,
        )
    return prefix_search(
        score,
        compose,
        counts,
        original,
        search_criterion,
        ratio,
        max_components,
        batch,
        bar,
    )
