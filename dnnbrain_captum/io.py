"""Image files in, model-ready tensors out: loading, preprocessing and image data sets.

This is the only place (with :mod:`dnnbrain_captum.visualization`) where files, PIL and numpy
meet the package. Everything here returns float tensors of shape (3, H, W) (one image) in
[0, 1] before normalisation, so the attribution classes never see a file.

Main entry points
-----------------
* :func:`find_images` — files and folders (recursively) to a sorted list of image paths.
* :func:`load_image` — one file to a ``(3, H, W)`` float32 tensor in [0, 1], optionally resized.
* :func:`check_images` — decode every file once and name the unreadable ones (before a run
  writes anything).
* :class:`Preprocess` and :func:`preprocessing_for` — a model's preprocessing (resize the
  shorter side, centre crop, normalisation), e.g. the bundled digits model (32, no
  normalisation) or a torchvision model (the sizes and statistics of its weights' transforms:
  224 for most, 299 for Inception v3); :func:`class_names` from the weights' metadata.
* :class:`ImageFolderDataset` — a map-style data set over files/folders, items ``(image, index)``.
* :func:`read_image_list` / :meth:`ImageFolderDataset.from_csv` — a CSV list of paths with
  optional labels (plain CSV with a ``path`` column, or DNNBrain's ``.stim.csv`` layout).

Unreadable files raise :class:`UnreadableImageError` (a ``ValueError``) naming the file;
:func:`dnnbrain_captum.run_over` turns them into a skip report instead of a crash.

The code lives in ``_image_files`` (finding, reading and checking files), ``_image_lists``
(CSV lists and :class:`ImageFolderDataset`) and here (preprocessing); import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dnnbrain_captum._image_files import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    _pair_size,
    check_images,
    find_images,
    load_image,
)
from dnnbrain_captum._image_lists import ImageFolderDataset, read_image_list

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "Preprocess",
    "UnreadableImageError",
    "check_images",
    "class_names",
    "find_images",
    "load_image",
    "preprocessing_for",
    "read_image_list",
]

#: ImageNet channel means and standard deviations (torchvision's pretrained models).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """A model's preprocessing of one ``(3, H, W)`` image in [0, 1].

    Steps, each optional: resize to ``size`` (int: the shorter side, keeping the aspect ratio;
    ``(h, w)``: exactly), centre crop to ``crop``, then ``(x − mean) / std`` per channel.
    The resize is antialiased, ``interpolation`` ``"bilinear"`` or ``"bicubic"`` (as the
    model's torchvision weights resize: Swin, MaxViT and EfficientNet use bicubic).

    Examples
    --------
    >>> step = Preprocess(size=(4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> step(torch.ones(3, 8, 8)).shape, float(step(torch.ones(3, 8, 8)).max())
    (torch.Size([3, 4, 4]), 1.0)
    """

    size: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}"
            )
        if isinstance(self.size, int) and not isinstance(self.size, bool) and self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.size is not None and not isinstance(self.size, int):
            _pair_size(self.size, "size")
        _pair_size(self.crop, "crop")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def __call__(self, image: Tensor) -> Tensor:
        """Apply the steps to an image of shape (C, H, W); returns (C, h, w)."""
        x = image
        if self.size is not None:
            height, width = x.shape[-2:]
            if isinstance(self.size, int):
                scale = self.size / min(height, width)
                target = (max(1, round(height * scale)), max(1, round(width * scale)))
            else:
                target = tuple(self.size)
            if tuple(x.shape[-2:]) != target:
                x = torch.nn.functional.interpolate(
                    x.unsqueeze(0),
                    size=target,
                    mode=self.interpolation,
                    align_corners=False,
                    antialias=True,
                ).squeeze(0)
        crop = _pair_size(self.crop, "crop")
        if crop is not None:
            height, width = x.shape[-2:]
            if crop[0] > height or crop[1] > width:
                raise ValueError(f"crop {crop} is larger than the image {(height, width)}")
            top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
            x = x[..., top : top + crop[0], left : left + crop[1]]
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()


def preprocessing_for(model: Any, weights: Any = None) -> Preprocess:
    """The preprocessing a model expects: resize the shorter side, centre-crop, normalise.

    Images are never squashed: the shorter side is resized (aspect ratio kept) and the centre
    cropped to the model's input size.

    Parameters
    ----------
    model : str or nn.Module
        ``"digits"`` or the bundled :class:`~dnnbrain_captum.models.digits.DigitsCNN`: shorter
        side to 32, centre 32×32, no normalisation. A torchvision classification model name
        (``"alexnet"``, ``"vit_b_16"``, ``"inception_v3"``, ...): the sizes and ImageNet
        statistics of the transforms of its default torchvision weights (224 for most, 299
        for Inception v3); nothing is downloaded, only the weights' metadata is read. Any other
        module: resize 256, crop 224 and ImageNet mean/std (DNNBrain's models).
    weights : torchvision ``WeightsEnum`` member, optional
        The weights actually used: their own transforms' sizes and statistics win.

    Returns
    -------
    Preprocess

    Raises
    ------
    ValueError
        A string that is neither ``"digits"`` nor a torchvision classification model name
        (close names are suggested).

    Examples
    --------
    >>> preprocessing_for("digits")
    Preprocess(size=32, crop=32, mean=None, std=None, interpolation='bilinear')
    >>> preprocessing_for("alexnet").crop, preprocessing_for("inception_v3").crop
    (224, 299)
    >>> preprocessing_for("inception_v3").size
    342
    """
    from dnnbrain_captum.models.digits import DIGITS_SIZE, DigitsCNN

    if isinstance(model, DigitsCNN) or (isinstance(model, str) and model == "digits"):
        return Preprocess(size=DIGITS_SIZE, crop=DIGITS_SIZE)
    if weights is None and isinstance(model, str):
        weights = _default_weights(model)
    if weights is None:
        return Preprocess(size=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    transform = weights.transforms()
    return Preprocess(
        size=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        interpolation="bicubic" if transform.interpolation.value == "bicubic" else "bilinear",
    )


def _default_weights(name: str) -> Any:
    """The default weights entry of a torchvision classification model (metadata only)."""
    import torchvision.models as tvm

    known = sorted(tvm.list_models(module=tvm))
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, [*known, "digits"], n=4, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(
            f"unknown model {name!r}: expected 'digits' or a torchvision classification model "
            f"name{hint}"
        )
    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def class_names(weights: Any) -> list[str] | None:
    """The class names in a torchvision weights entry's metadata, or None.

    Examples
    --------
    >>> import torchvision
    >>> class_names(torchvision.models.AlexNet_Weights.IMAGENET1K_V1)[:2]
    ['tench', 'goldfish']
    """
    meta = getattr(weights, "meta", None) or {}
    names = meta.get("categories")
    return [str(n) for n in names] if names else None
