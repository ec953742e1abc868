"""Checks of user input that raise clear ``TypeError``/``ValueError`` messages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_finite",
    "check_image_batch",
    "check_inputs",
    "finite",
    "non_negative",
    "pair",
    "positive_int",
]


def check_inputs(inputs: Any, name: str = "inputs") -> tuple[Tensor, ...]:
    """Validate a tensor or tuple of tensors (non-empty batch, floating point, finite).

    Returns
    -------
    tuple of Tensor
        The inputs as a tuple.
    """
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    if not items:
        raise ValueError(f"{name} is an empty tuple; expected at least one tensor")
    for k, item in enumerate(items):
        label = name if len(items) == 1 else f"{name}[{k}]"
        if not isinstance(item, Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(item).__name__}")
        if item.dim() == 0 or item.shape[0] == 0:
            raise ValueError(f"{label} has shape {tuple(item.shape)}: the batch is empty")
        if not item.is_floating_point():
            raise TypeError(f"{label} must be a floating-point tensor, got {item.dtype}")
        if not bool(torch.isfinite(item).all()):
            raise ValueError(
                f"{label} contains NaN or infinite values ({_first_bad(item)}); under "
                "captum's NoiseTunnel, check that stdevs is finite"
            )
    if len({item.shape[0] for item in items}) > 1:
        raise ValueError(f"the tensors of {name} have different batch sizes")
    return items


def check_image_batch(inputs: Any, name: str = "inputs") -> Tensor:
    """Validate one image batch of shape (N, C, H, W) and return it.

    Raises
    ------
    TypeError
        If ``inputs`` is not a floating-point tensor (a tuple is refused too).
    ValueError
        For a wrong rank, an empty batch or non-finite values.
    """
    if isinstance(inputs, tuple):
        raise TypeError(f"{name} must be one image tensor (N, C, H, W), not a tuple")
    if isinstance(inputs, Tensor) and inputs.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W), got {inputs.dim()}-D shape {tuple(inputs.shape)}"
        )
    (checked,) = check_inputs(inputs, name)
    return checked


def pair(value: Any, name: str, minimum: int = 1) -> tuple[int, int]:
    """An (H, W) pair of ints from an int or a 2-sequence, each ``>= minimum``.

    Raises
    ------
    TypeError
        If ``value`` is not an int or a pair of ints.
    ValueError
        If an entry is below ``minimum``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got {value!r}")
    if isinstance(value, int):
        items = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        items = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if item < minimum:
            raise ValueError(f"{name}={value!r}: every entry must be >= {minimum}")
    return (int(items[0]), int(items[1]))


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1 (bool refused), else ``ValueError`` naming ``name``.

    Examples
    --------
    >>> positive_int(3, "n_iter")
    3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def non_negative(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0.

    Raises
    ------
    TypeError
        If ``value`` is not a number (bool refused).
    ValueError
        If it is negative, NaN or infinite.
    """
    number = finite(value, name)
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return number


def finite(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite real number (bool refused).

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN or infinite.

    Examples
    --------
    >>> finite(-2, "fill")
    -2.0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def _first_bad(values: Tensor) -> str:
    """Where the first NaN or infinity of ``values`` lies, e.g. ``"nan at index (0, 2)"``."""
    flags = ~torch.isfinite(values)
    where = tuple(int(i) for i in flags.nonzero()[0])
    bad = values[where].item()
    return f"{int(flags.sum())} of {values.numel()} entries; {bad} at index {where}"


def check_finite(value: Any, name: str) -> Any:
    """Return ``value`` unchanged if every number in it is finite, else raise ``ValueError``.

    Numbers, tensors (only floating-point and complex ones can hold NaN), and the items of
    tuples, lists and mappings are checked, recursively; anything else (strings, None,
    callables) is left alone. The error names the offending entry, e.g.
    ``segmentation_kwargs['sigma']``.

    Examples
    --------
    >>> check_finite({"sigma": 0.5, "mode": "x"}, "segmentation_kwargs")
    {'sigma': 0.5, 'mode': 'x'}
    """
    if isinstance(value, (bool, np.bool_)):
        return value
    if isinstance(value, Real):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            check_finite(torch.as_tensor(np.ascontiguousarray(value)), name)
    elif isinstance(value, Tensor):
        if (value.is_floating_point() or value.is_complex()) and not bool(
            torch.isfinite(value).all()
        ):
            raise ValueError(f"{name} must hold finite numbers only: {_first_bad(value)}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{name}[{key!r}]")
    elif isinstance(value, (tuple, list)):
        for k, item in enumerate(value):
            check_finite(item, f"{name}[{k}]")
    return value
