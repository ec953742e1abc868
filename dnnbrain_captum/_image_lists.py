"""Lists of image files: CSV lists (plain or DNNBrain's ``.stim.csv``) and the image data set.

Part of :mod:`dnnbrain_captum.io` (import from there).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from dnnbrain_captum._image_files import PathLike, UnreadableImageError, find_images, load_image


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
    >>> from dnnbrain_captum.io import preprocessing_for
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
