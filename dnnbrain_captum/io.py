"""Image files in, model-ready tensors out: loading, preprocessing and image data sets.

This is the only place (with :mod:`dnnbrain_captum.visualization`) where files, PIL and numpy
meet the package. Everything here returns float tensors of shape (3, H, W) (one image) in
[0, 1] before normalisation, so the attribution classes never see a file.

Main entry points
-----------------
* :func:`find_images` — files and folders (recursively) to a sorted list of image paths.
* :func:`load_image` — one file to a ``(3, H, W)`` float32 tensor in [0, 1], optionally resized.
* :class:`Preprocess` and :func:`preprocessing_for` — a model's preprocessing (resize the
  shorter side, centre crop, normalisation), e.g. the bundled digits model (32, no
  normalisation) or a torchvision model (the sizes and statistics of its weights' transforms:
  224 for most, 299 for Inception v3); :func:`class_names` from the weights' metadata.
* :class:`ImageFolderDataset` — a map-style data set over files/folders, items ``(image, index)``.
* :func:`read_image_list` / :meth:`ImageFolderDataset.from_csv` — a CSV list of paths with
  optional labels (plain CSV with a ``path`` column, or DNNBrain's ``.stim.csv`` layout).

Unreadable files raise :class:`UnreadableImageError` (a ``ValueError``) naming the file;
:func:`dnnbrain_captum.run_over` turns them into a skip report instead of a crash.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "Preprocess",
    "UnreadableImageError",
    "class_names",
    "find_images",
    "load_image",
    "preprocessing_for",
    "read_image_list",
]

#: File name endings (lower case) that :func:`find_images` picks up inside folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
#: ImageNet channel means and standard deviations (torchvision's pretrained models).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PathLike = str | os.PathLike[str]


class UnreadableImageError(ValueError):
    """A file that could not be decoded as an image; ``.path`` names it."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(paths: PathLike | Iterable[PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a list of image files.

    Parameters
    ----------
    paths : path or iterable of paths
        Image files (kept as given, whatever their extension, in the given order) and folders
        (their image files, by :data:`IMAGE_EXTENSIONS`, sorted by relative path; sub-folders
        too when ``recursive``).
    recursive : bool
        Descend into sub-folders of the given folders.

    Returns
    -------
    list of Path

    Raises
    ------
    FileNotFoundError
        A path that does not exist (named in the message).
    ValueError
        No paths given, or a folder without any image file (named in the message).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.jpg", "notes.txt"):
    ...     _ = (root / name).write_bytes(b"")
    >>> [p.name for p in find_images(root)]
    ['a.jpg', 'b.png']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    given = [Path(p) for p in paths]
    if not given:
        raise ValueError("no image paths given")
    for path in given:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            inside = sorted(
                (p for p in path.glob(pattern) if p.is_file() and _is_image(p)),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not inside:
                raise ValueError(
                    f"folder {path} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)})"
                )
            found.extend(inside)
        else:
            found.append(path)
    return found


def _pair_size(size: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, bool):
        raise TypeError(f"{name} must be an int or (height, width), got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def load_image(path: PathLike, size: int | tuple[int, int] | None = None) -> Tensor:
    """Read one image file as an RGB float tensor in [0, 1].

    Parameters
    ----------
    path : str or PathLike
        Any format PIL reads. Grey, palette and RGBA images are converted to RGB (alpha dropped).
    size : int or (height, width), optional
        Resize to this size (bilinear, antialiased). An int gives a square image.

    Returns
    -------
    Tensor of shape (3, H, W)
        float32 in [0, 1].

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    UnreadableImageError
        The file exists but is not a readable image (a ``ValueError`` naming the file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "grey.png"
    >>> Image.new("L", (5, 4), color=255).save(path)
    >>> image = load_image(path)
    >>> tuple(image.shape), float(image.max())
    ((3, 4, 5), 1.0)
    >>> tuple(load_image(path, size=8).shape)
    (3, 8, 8)
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    hw = _pair_size(size, "size")
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            if hw is not None and (image.height, image.width) != hw:
                image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8).copy()
    except Image.DecompressionBombError as err:  # the header claims too many pixels
        raise UnreadableImageError(
            path, f"refused as a possible decompression bomb (PIL): {err}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise UnreadableImageError(path, str(err) or type(err).__name__) from None
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0)


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


def read_image_list(csv_path: PathLike) -> tuple[list[Path], list[int] | None]:
    """Read a CSV list of image paths with optional integer labels.

    Two layouts are accepted:

    * plain CSV with a header row holding a ``path`` (or ``stimID``) column and optionally a
      ``label`` column;
    * DNNBrain's ``.stim.csv``: ``key=value`` lines (``type=image``, ``path=ROOT``,
      ``data=stimID,label``) followed by the rows; ``path=`` gives the folder the ``stimID``
      values are relative to.

    Relative paths are taken relative to ``ROOT`` when given, else to the CSV's folder.

    Returns
    -------
    paths : list of Path
    labels : list of int, or None when the file has no label column

    Raises
    ------
    FileNotFoundError
        The CSV file does not exist.
    ValueError
        No path column, an empty list, or a label that is not an integer (row named).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> listing = pathlib.Path(tempfile.mkdtemp()) / "stimuli.csv"
    >>> _ = listing.write_text("path,label\\na.png,3\\nsub/b.png,7\\n")
    >>> paths, labels = read_image_list(listing)
    >>> [p.name for p in paths], labels
    (['a.png', 'b.png'], [3, 7])
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no such CSV file: {csv_path}")
    lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
    root = csv_path.parent
    columns: list[str] | None = None
    start = 0
    for start, line in enumerate(lines):  # noqa: B007 - start is used after the loop
        stripped = line.strip()
        if not stripped:
            continue
        key, sep, value = stripped.partition("=")
        if sep and "," not in key:
            key = key.strip().lower()
            if key == "path":
                root_path = Path(value.strip())
                root = root_path if root_path.is_absolute() else csv_path.parent / root_path
            elif key == "data":
                columns = [c.strip() for c in value.split(",")]
            continue
        break
    else:
        start = len(lines)
    rows = [row for row in csv.reader(lines[start:]) if row and any(c.strip() for c in row)]
    if columns is None:
        if not rows:
            raise ValueError(f"{csv_path} lists no images")
        columns = [c.strip() for c in rows[0]]
        rows = rows[1:]
    lowered = [c.lower() for c in columns]
    path_key = next((k for k in ("path", "stimid", "file", "filename") if k in lowered), None)
    if path_key is None:
        raise ValueError(
            f"{csv_path} has no path column (expected 'path' or 'stimID'); columns: {columns}"
        )
    path_col = lowered.index(path_key)
    label_col = lowered.index("label") if "label" in lowered else None
    paths: list[Path] = []
    labels: list[int] = []
    for number, row in enumerate(rows, start=1):
        cell = row[path_col].strip() if path_col < len(row) else ""
        if not cell:
            raise ValueError(f"{csv_path}: data row {number} has no path")
        path = Path(cell)
        paths.append(path if path.is_absolute() else root / path)
        if label_col is not None:
            text = row[label_col].strip() if label_col < len(row) else ""
            try:
                labels.append(int(text))
            except ValueError:
                raise ValueError(
                    f"{csv_path}: data row {number} ({cell}) has label {text!r}, not an integer"
                ) from None
    if not paths:
        raise ValueError(f"{csv_path} lists no images")
    return paths, (labels if label_col is not None else None)


class ImageFolderDataset(Dataset):
    """Image files (from folders, a list of paths or a CSV list) as a map-style data set.

    Files are only opened when an item is requested, so an unreadable file raises
    :class:`UnreadableImageError` naming it for that item only (``run_over(...,
    on_error="skip")`` then skips and reports it, keeping every other result).

    Parameters
    ----------
    root_or_paths : path or iterable of paths
        Folders and/or files, expanded by :func:`find_images`.
    transform : callable, optional
        Applied to each ``(3, H, W)`` tensor in [0, 1], e.g. ``preprocessing_for(model)``.
    labels : sequence of int, optional
        One label per file (e.g. from a CSV list), kept in :attr:`labels`.

    Attributes
    ----------
    paths : list of Path
        The files, in data-set order.
    ids : list of str
        Stimulus identifiers: paths relative to the common folder of all files (POSIX form).
    labels : list of int or None

    Items
    -----
    ``(image, index)``: a float32 tensor of shape (3, H, W) and the item's position.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for k in range(3):
    ...     Image.new("RGB", (40, 30), color=(k, 0, 0)).save(root / f"img{k}.png")
    >>> data = ImageFolderDataset(root, transform=preprocessing_for("digits"))
    >>> len(data), data.ids[0], tuple(data[0][0].shape)
    (3, 'img0.png', (3, 32, 32))
    """

    def __init__(
        self,
        root_or_paths: PathLike | Iterable[PathLike],
        transform: Callable[[Tensor], Tensor] | None = None,
        labels: Sequence[int] | None = None,
    ) -> None:
        self.paths = find_images(root_or_paths)
        if labels is not None:
            labels = [int(v) for v in labels]
            if len(labels) != len(self.paths):
                raise ValueError(
                    f"labels has {len(labels)} entries but there are {len(self.paths)} images"
                )
        self.labels: list[int] | None = labels  # type: ignore[assignment]
        self.transform = transform
        self.ids = _relative_ids(self.paths)

    @classmethod
    def from_csv(
        cls, csv_path: PathLike, transform: Callable[[Tensor], Tensor] | None = None
    ) -> ImageFolderDataset:
        """A data set over the files (and labels) listed in a CSV file (:func:`read_image_list`).

        Listed files that do not exist are not checked here; they are reported per item.
        """
        paths, labels = read_image_list(csv_path)
        data = cls.__new__(cls)
        data.paths = paths
        data.labels = labels
        data.transform = transform
        data.ids = _relative_ids(paths)
        return data

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self.paths) <= index < len(self.paths):
            raise IndexError(f"index {index} out of range for {len(self.paths)} images")
        path = self.paths[index]
        if not path.is_file():
            raise UnreadableImageError(path, "no such file")
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, index % len(self.paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, transform={self.transform!r})"


def _relative_ids(paths: Sequence[Path]) -> list[str]:
    """Paths relative to their deepest common folder, as POSIX strings."""
    if not paths:
        return []
    absolute = [p.absolute() for p in paths]
    try:
        common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
        return [p.relative_to(common).as_posix() for p in absolute]
    except ValueError:  # different drives
        return [p.as_posix() for p in absolute]
