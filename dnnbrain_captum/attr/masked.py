"""Masked image: a tight, blurred mask around an image's high-contrast region (Walker et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from captum.log import log_usage
from torch import Tensor
from tqdm.auto import tqdm

from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.caller import warn_at_caller
from dnnbrain_captum._utils.filters import gaussian_blur
from dnnbrain_captum._utils.hooks import warn_if_training
from dnnbrain_captum._utils.targets import (
    check_reduction,
    evaluate_target,
    per_example_targets,
    take_examples,
)
from dnnbrain_captum._utils.validation import check_image_batch, non_negative, positive_int
from dnnbrain_captum.attr._base import LayerPerturbation
from dnnbrain_captum.attr._search import check_batch_size, check_ratio

__all__ = ["MaskedImage", "MaskedImages", "contrast_hull", "reference_colour"]

_LUMINANCE = (0.2125, 0.7154, 0.0721)  # scikit-image's rgb2gray weights


def _warn_of_outcomes(
    non_positive: list[int], not_reached: list[int], stop: str, ratio: float, max_iter: int
) -> None:
    """Warn (at the caller of ``attribute``) of examples whose erosion did not end as asked."""
    if non_positive:
        warn_at_caller(
            f"the baseline activation is not positive for example(s) {non_positive}: a "
            f"fraction of it is no reduction, so the hull mask is returned uneroded",
        )
    if not_reached:
        chosen = "with the lowest activation" if stop == "drop" else "deepest non-empty"
        warn_at_caller(
            f"the activation did not fall {'to' if stop == 'drop' else 'below'} {ratio} × "
            f"baseline within max_iter={max_iter} erosions (or before the mask vanished) "
            f"for example(s) {not_reached}; the mask {chosen} is returned",
        )


def _fallback_depth(activation: Tensor, stop: str, vanished: bool) -> int:
    """The depth returned when no erosion crossed the level: see ``stop`` in ``attribute``."""
    if activation.shape[0] == 1:
        return 0
    if stop == "keep":
        return activation.shape[0] - (2 if vanished else 1)
    deeper = activation[1:].flip(0)
    return activation.shape[0] - 1 - int(deeper.argmin())


class MaskedImages(NamedTuple):
    """Result of :meth:`MaskedImage.attribute` with ``return_masks=True``.

    Attributes
    ----------
    images : Tensor of shape (N, C, H, W)
        ``mask · x + (1 − mask) · reference``, the reference colour as background.
    masks : Tensor of shape (N, 1, H, W)
        The blurred mask in [0, 1] that made each image.
    activation : Tensor of shape (N,)
        The target's activation on the returned image.
    baseline : Tensor of shape (N,)
        The activation on the un-eroded (hull) masked image.
    n_erosions : Tensor of shape (N,), long
        How many 3×3 erosions the returned mask went through.
    """

    images: Tensor
    masks: Tensor
    activation: Tensor
    baseline: Tensor
    n_erosions: Tensor


def _luminance(image: Tensor) -> Tensor:
    if image.shape[0] == 3:
        weights = torch.tensor(_LUMINANCE, dtype=image.dtype, device=image.device)
        return (image * weights[:, None, None]).sum(0)
    return image.mean(0)


def _hull_vertices(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull of 2-D points (monotone chain), counter-clockwise, no repeated end."""
    points = sorted(set(points))
    if len(points) <= 2:
        return points

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


REFERENCES = ("border", "mode", "mean")
STOPS = ("keep", "drop")


def reference_colour(image: Tensor, reference: str = "mean") -> Tensor:
    """The colour that counts as "no contrast" and fills masked-out pixels, shape (C, 1, 1).

    * ``"mean"``: each channel's mean (DNNBrain; Walker et al.'s most-exciting images on a
      grey background).
    * ``"border"``: each channel's median over the image's outermost rows and columns (the
      background of a centred object, such as a digit on its frame).
    * ``"mode"``: the most common colour: the luminance is cut into 32 equal bins between its
      minimum and maximum, and the colour is each channel's median over the most populated
      bin (ties: the darker bin).

    Examples
    --------
    >>> image = torch.zeros(1, 5, 5)
    >>> image[0, 1:4, 1:4] = 1.0  # a bright square on a black frame
    >>> [float(reference_colour(image, r)) for r in ("mean", "border", "mode")]
    [0.36000001430511475, 0.0, 0.0]
    """
    if reference == "mean":
        return image.mean(dim=(1, 2), keepdim=True)
    if reference == "border":
        rim = torch.cat(
            [image[:, 0], image[:, -1], image[:, 1:-1, 0], image[:, 1:-1, -1]], dim=1
        )  # (C, 2W + 2H - 4)
        return rim.median(dim=1).values[:, None, None]
    if reference != "mode":
        raise ValueError(f"contrast_reference must be one of {REFERENCES}, got {reference!r}")
    grey = _luminance(image).flatten()
    low, high = grey.min(), grey.max()
    bins = ((grey - low) / (high - low).clamp_min(1e-12) * 32).long().clamp(0, 31)
    common = bins == int(torch.bincount(bins, minlength=32).argmax())
    return image.flatten(1)[:, common].median(dim=1).values[:, None, None]


def contrast_hull(
    image: Tensor, stdev_size_thr: float = 1.0, contrast_reference: str = "mean"
) -> Tensor:
    """Convex hull of an image's high-contrast pixels, shape (H, W), bool.

    The luminance ``g`` (scikit-image's RGB weights for 3 channels, the channel mean
    otherwise) gives the contrast ``|g − r|``, ``r`` the luminance of
    :func:`reference_colour` (``"mean"``: DNNBrain's ``|g − mean(g)|``); pixels whose contrast
    exceeds ``stdev_size_thr × std(contrast)`` are selected, and the mask is the convex hull
    of their centres.

    Raises
    ------
    ValueError
        If no pixel exceeds the threshold (a uniform image, or a threshold too high).

    Examples
    --------
    >>> image = torch.zeros(1, 7, 7)
    >>> image[0, 1, 1] = image[0, 1, 5] = image[0, 5, 3] = 1.0
    >>> contrast_hull(image).int()[1:6, 1:6]
    tensor([[1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 0, 0]], dtype=torch.int32)
    """
    grey = _luminance(image)
    contrast = (grey - _luminance(reference_colour(image, contrast_reference))).abs()
    above = contrast > contrast.std(correction=0) * stdev_size_thr
    if not bool(above.any()):
        raise ValueError(
            f"no pixel exceeds the contrast threshold stdev_size_thr={stdev_size_thr} × std; "
            "the image is uniform or the threshold too high"
        )
    rows = torch.nonzero(above.any(1))[:, 0]
    points: list[tuple[float, float]] = []
    for r in rows.tolist():
        cols = torch.nonzero(above[r])[:, 0]
        points += [(float(r), float(cols[0])), (float(r), float(cols[-1]))]
    hull = torch.tensor(_hull_vertices(points), dtype=torch.float64)
    h, w = grey.shape
    grid_r, grid_c = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    inside = (
        (grid_r >= hull[:, 0].min())
        & (grid_r <= hull[:, 0].max())
        & (grid_c >= hull[:, 1].min())
        & (grid_c <= hull[:, 1].max())
    )
    if hull.shape[0] >= 2:
        start, end = hull, hull.roll(-1, 0)
        edge = end - start  # (E, 2)
        cross = edge[:, 0, None, None] * (grid_c - start[:, 1, None, None]) - edge[
            :, 1, None, None
        ] * (grid_r - start[:, 0, None, None])
        eps = 1e-9
        inside &= (cross >= -eps).all(0) | (cross <= eps).all(0)
    return (inside.to(image.device) | above).contiguous()


def _erode(mask: Tensor) -> Tensor:
    """One binary erosion with a 3×3 square; outside the image counts as unmasked."""
    return -F.max_pool2d(-F.pad(mask, (1, 1, 1, 1), value=0.0), 3, stride=1)


@captum_keyword_aliases
class MaskedImage(LayerPerturbation):
    """Tight mask around the high-contrast part of an image that still drives the target.

    For each image (Walker et al. 2019; DNNBrain's ``put_mask``):

    1. contrast threshold: luminance pixels deviating from the reference colour
       (``contrast_reference``, see :func:`reference_colour`) by more than
       ``stdev_size_thr`` standard deviations of that deviation;
    2. the convex hull of those pixels is the initial mask;
    3. the mask is blurred (Gaussian, ``filter_sigma``) and the image is shown through it
       over a background of the reference colour (per channel, in model space, so it suits
       any normalisation): ``mask · x + (1 − mask) · reference``;
    4. the activation on the depth-0 (hull) image is the *baseline*; the mask is eroded
       (3×3 square, one pixel per side per step, the image border counting as outside).
       ``stop="keep"`` (default) returns the deepest mask whose activation is still at least
       ``target_reduction_ratio × baseline`` (the tightest mask keeping that share of the
       response); ``stop="drop"`` returns the first mask whose activation falls to
       ``target_reduction_ratio × baseline`` or below (DNNBrain and Walker et al.'s code).

    The procedure was designed for most-exciting images: a synthesis from
    :class:`~dnnbrain_captum.optim.SynthesisImage` started from grey, whose contrast lies where
    the unit looks. For natural images the default reference ``"border"`` (the colour of the
    image's outermost pixels) keeps a uniform background out of the contrast, so the mask
    follows the object (a digit's strokes, not its frame); ``"mean"`` is DNNBrain's choice,
    which on a digit also selects the background (the mean lies between strokes and frame).

    Defined edge cases (a warning names the examples; nothing crashes):

    * **non-positive baseline**: a fraction of a non-positive activation is no reduction, so
      no erosion is searched; the hull mask (depth 0) is returned.
    * **ratio not crossed** within ``max_iter`` erosions, or the mask vanished first:
      ``"drop"`` returns the evaluated mask with the lowest activation (ties: the deeper
      one), ``"keep"`` the deepest evaluated mask that is not empty.

    Colour and grey images of any size work; the contrast uses scikit-image's luminance
    weights for 3 channels and the channel mean otherwise, the masking uses every channel
    (DNNBrain converted to grey and required 224 × 224).

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module, str or None
        The layer whose channel or unit is explained (module, path or DNNBrain alias); None
        explains the model output with Captum's target.

    References
    ----------
    .. [1] Walker, E. Y., Sinz, F. H., et al. (2019). Inception loops discover what excites
       neurons most using deep predictive models. Nature Neuroscience 22, 2060–2065.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn, digits_images
    >>> images, labels = digits_images(n=2)
    >>> out = MaskedImage(digits_cnn()).attribute(images, target=labels, return_masks=True)
    >>> tuple(out.images.shape), tuple(out.masks.shape)
    ((2, 3, 32, 32), (2, 1, 32, 32))
    >>> bool((out.activation >= 0.9 * out.baseline).all())
    True
    """

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        stdev_size_thr: float = 1.0,
        filter_sigma: float = 1.0,
        target_reduction_ratio: float = 0.9,
        max_iter: int = 100,
        contrast_reference: str = "border",
        stop: str = "keep",
        return_masks: bool = False,
        reduction: str = "mean",
        perturbations_per_eval: int = 16,
        show_progress: bool = False,
    ) -> Tensor | MaskedImages:
        """Masked images of ``target``.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W)
            Model-ready images.
        target : int, tuple, callable, list or Tensor
            With a layer: channel, unit ``(c, i, j)``, callable or one per example (0-based).
            Without a layer: Captum's target on the model output.
        additional_forward_args : Any, optional
            Further positional arguments of the model.
        stdev_size_thr : float
            Contrast threshold in standard deviations, >= 0.
        filter_sigma : float
            Standard deviation of the Gaussian mask blur in pixels, >= 0.
        target_reduction_ratio : float in (0, 1)
            Share of the baseline activation that decides where erosion stops (``stop``).
        max_iter : int
            Most erosions tried, >= 1.
        contrast_reference : {"border", "mode", "mean"}
            The colour that counts as no contrast and fills the masked-out pixels
            (:func:`reference_colour`); ``"mean"`` is DNNBrain's.
        stop : {"keep", "drop"}
            ``"keep"``: the deepest mask keeping at least the ratio of the baseline;
            ``"drop"``: the first mask at or below it (DNNBrain).
        return_masks : bool
            Return :class:`MaskedImages` instead of the images alone.
        reduction : {"mean", "max", "sum"}
            How a channel becomes one scalar.
        perturbations_per_eval : int
            Erosion depths evaluated per forward pass.
        show_progress : bool
            Show a tqdm progress bar over the images.

        Returns
        -------
        Tensor of shape (N, C, H, W), or MaskedImages
            ``(images, masks, activation, baseline, n_erosions)`` with ``return_masks``.

        Raises
        ------
        ValueError
            Ratio outside (0, 1), negative threshold or sigma, ``max_iter < 1``, an unknown
            reference or stop, or an image without any pixel above the contrast threshold.
        """
        x = check_image_batch(inputs)
        ratio = check_ratio(target_reduction_ratio, "target_reduction_ratio")
        non_negative(stdev_size_thr, "stdev_size_thr")
        non_negative(filter_sigma, "filter_sigma")
        positive_int(max_iter, "max_iter")
        check_reduction(reduction)
        batch = check_batch_size(perturbations_per_eval)
        if contrast_reference not in REFERENCES:
            raise ValueError(
                f"contrast_reference must be one of {REFERENCES}, got {contrast_reference!r}"
            )
        if stop not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
        n = x.shape[0]
        entries = per_example_targets(target, n)
        hulls = [contrast_hull(x[k], float(stdev_size_thr), contrast_reference) for k in range(n)]
        warn_if_training(self.forward_func)
        results: list[tuple[Tensor, Tensor, Tensor, Tensor, int]] = []
        non_positive: list[int] = []
        not_reached: list[int] = []
        with torch.no_grad():
            for k in tqdm(range(n), desc="Masked image", disable=not show_progress):
                example_target = target if entries is None else [entries[k]]
                outcome = self._one(
                    x[k : k + 1],
                    reference_colour(x[k], contrast_reference)[None],
                    stop,
                    hulls[k],
                    float(filter_sigma),
                    ratio,
                    max_iter,
                    batch,
                    example_target,
                    take_examples(additional_forward_args, torch.tensor([k]), n),
                    reduction,
                )
                if outcome[-1] == "non-positive":
                    non_positive.append(k)
                elif outcome[-1] == "not reached":
                    not_reached.append(k)
                results.append(outcome[:-1])  # type: ignore[arg-type]
        _warn_of_outcomes(non_positive, not_reached, stop, ratio, max_iter)
        images = torch.cat([r[0] for r in results])
        if not return_masks:
            return images
        return MaskedImages(
            images=images,
            masks=torch.cat([r[1] for r in results]),
            activation=torch.stack([r[2] for r in results]).to(x.dtype),
            baseline=torch.stack([r[3] for r in results]).to(x.dtype),
            n_erosions=torch.tensor([r[4] for r in results], device=x.device),
        )

    def _one(
        self,
        image: Tensor,
        fill: Tensor,
        stop: str,
        hull: Tensor,
        sigma: float,
        ratio: float,
        max_iter: int,
        batch: int,
        target: Any,
        args: Any,
        reduction: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int, str]:
        """Erode one image's mask; returns (image, mask, activation, baseline, depth, status)."""
        current = hull.to(image.dtype)[None, None]
        masks: list[Tensor] = []
        values: list[Tensor] = []
        vanished = False
        status = "not reached"
        chosen = -1
        evaluated = 0
        while evaluated <= max_iter and not vanished:
            depths: list[Tensor] = []
            while len(depths) < batch and evaluated <= max_iter and not vanished:
                depths.append(current)
                evaluated += 1
                vanished = not bool(current.any())
                current = _erode(current)
            soft = gaussian_blur(torch.cat(depths), sigma, mode="reflect")
            candidates = soft * image + (1 - soft) * fill
            chunk_target = target
            if isinstance(target, list):
                chunk_target = target * soft.shape[0]
            chunk_args = take_examples(args, torch.zeros(soft.shape[0], dtype=torch.long), 1)
            values.append(
                evaluate_target(
                    self.forward_func,
                    self.layer,
                    (candidates,),
                    chunk_target,
                    reduction,
                    chunk_args,
                    reshape_transform=self.reshape_transform,
                )
            )
            masks.append(soft)
            activation = torch.cat(values)
            baseline = float(activation[0])
            if baseline <= 0:
                status, chosen = "non-positive", 0
                break
            level = ratio * baseline
            crossed = activation[1:] <= level if stop == "drop" else activation[1:] < level
            hits = torch.nonzero(crossed)
            if hits.numel():
                status, chosen = "reached", int(hits[0, 0]) + (1 if stop == "drop" else 0)
                break
        activation = torch.cat(values)
        all_masks = torch.cat(masks)
        if chosen < 0:
            chosen = _fallback_depth(activation, stop, vanished)
        mask = all_masks[chosen : chosen + 1]
        return (
            mask * image + (1 - mask) * fill,
            mask,
            activation[chosen],
            activation[0],
            chosen,
            status,
        )
