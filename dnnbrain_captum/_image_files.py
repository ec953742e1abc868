"""Image files: finding them in folders, reading one as a tensor, checking that they decode.

Part of :mod:`dnnbrain_captum.io` (import from there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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
    from PIL import Image

    path = Path(path)
    hw = _pair_size(size, "size")
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    with _decoding(path):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            if hw is not None and (image.height, image.width) != hw:
                image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0)


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn PIL's errors while decoding ``path`` into one :class:`UnreadableImageError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as err:  # the header claims too many pixels
        raise UnreadableImageError(
            path, f"refused as a possible decompression bomb (PIL): {err}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise UnreadableImageError(path, str(err) or type(err).__name__) from None


def check_images(paths: Iterable[PathLike]) -> list[UnreadableImageError]:
    """Decode every file once (nothing kept) and give the errors of those that do not read.

    A damaged header, a truncated file, a "decompression bomb" (a header claiming more pixels
    than PIL accepts) and a missing file are each found here, so that a run can refuse them
    before it writes anything. Costs one full decode per file.

    Parameters
    ----------
    paths : iterable of path
        Image files.

    Returns
    -------
    list of UnreadableImageError
        One per unreadable file, in the given order (empty when all read); ``.path`` names it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (4, 4)).save(root / "good.png")
    >>> _ = (root / "bad.png").write_bytes(b"not an image")
    >>> [pathlib.Path(e.path).name for e in check_images([root / "good.png", root / "bad.png"])]
    ['bad.png']
    """
    from PIL import Image

    errors: list[UnreadableImageError] = []
    for given in paths:
        path = Path(given)
        try:
            if not path.is_file():
                raise UnreadableImageError(path, "no such file")
            with _decoding(path), Image.open(path) as opened:
                opened.load()
        except UnreadableImageError as err:
            errors.append(err)
    return errors
