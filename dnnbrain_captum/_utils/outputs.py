"""The model output explained with ``layer=None``: one tensor, and targets that index it.

A model whose forward returns a tuple, a list or a dict (detection heads, auxiliary logits,
Hugging Face ``ModelOutput`` objects) is refused with a ``TypeError`` that names what it returned;
:class:`SelectOutput` wraps it so that its forward returns the one tensor to explain.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["SelectOutput", "check_model_output", "check_output_target"]


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {list(output)}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    return f"a {type(output).__name__}"


def check_model_output(output: Any) -> Tensor:
    """``output`` if it is a tensor, else a ``TypeError`` naming its type and the way out.

    Raises
    ------
    TypeError
        For a tuple, list, dict or any other non-tensor output.
    """
    if isinstance(output, Tensor):
        return output
    raise TypeError(
        f"the model returns {_describe(output)}, not one tensor; to explain the model output "
        "(layer=None), wrap the model so that it returns the tensor to explain, e.g. "
        "dnnbrain_captum.SelectOutput(model, 0) or SelectOutput(model, 'logits'), or give a "
        "layer"
    )


def _index(value: Any) -> int | None:
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.is_floating_point()):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_output_target(output: Tensor, target: Any) -> None:
    """Check that an int, tuple or per-example target indexes ``output`` (0-based).

    Errors talk about the model output: "class" for an ``(N, K)`` output, "target" with the
    output's shape otherwise. Targets of other types are left to Captum.

    Raises
    ------
    ValueError
        For an index out of range or a unit tuple of the wrong length.
    """
    if isinstance(target, Tensor) and target.dim() == 1:
        target = target.tolist()
    entries = target if isinstance(target, list) else [target]
    for entry in entries:
        unit = tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)
        indices = [_index(i) for i in unit]
        if any(i is None for i in indices) or output.dim() < 2:
            continue
        if isinstance(entry, (tuple, list)) and len(unit) != output.dim() - 1:
            raise ValueError(
                f"target {entry} has {len(unit)} indices but the model output "
                f"{tuple(output.shape)} has {output.dim() - 1} non-batch dimensions"
            )
        shape = output.shape[1:]
        if all(0 <= i < size for i, size in zip(indices, shape, strict=False)):
            continue
        if not isinstance(entry, (tuple, list)) and output.dim() == 2:
            k = output.shape[1]
            raise ValueError(
                f"target class {entry} is out of range: the model output has {k} classes, "
                f"valid targets are 0..{k - 1} (0-based)"
            )
        raise ValueError(
            f"target {entry} lies outside the model output of shape {tuple(output.shape)} "
            "(0-based indices after the batch dimension)"
        )


class SelectOutput(nn.Module):
    """Wrap a model whose forward returns several outputs so that it returns one tensor.

    ``SelectOutput(model, 0)`` returns ``model(...)[0]``, ``SelectOutput(model, "logits")``
    returns ``model(...)["logits"]`` (a dict, or an object with that attribute), and
    ``SelectOutput(model, f)`` returns ``f(model(...))``. Use it as the model of any class to
    explain that output with ``layer=None``. The wrapped model is the submodule ``model``: give
    layers as modules (``model.conv1``) or as ``"model.conv1"``. The wrapper starts in the
    model's mode and changes no mode of the model.

    Parameters
    ----------
    model : nn.Module
        The model.
    select : int, str or callable
        Which output to return.

    Examples
    --------
    >>> import torch
    >>> two = SelectOutput(nn.Identity(), lambda x: x * 2)
    >>> two(torch.ones(1, 2))
    tensor([[2., 2.]])
    """

    def __init__(self, model: nn.Module, select: int | str | Callable[[Any], Tensor]) -> None:
        super().__init__()
        if isinstance(select, bool) or not isinstance(select, (int, str)) and not callable(select):
            raise TypeError(f"select must be an int, a str or a callable, got {select!r}")
        self.model = model
        self.select = select
        self.training = model.training  # the wrapper's own flag only; the model is untouched

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        output = self.model(*args, **kwargs)
        if callable(self.select):
            picked = self.select(output)
        elif isinstance(self.select, str) and not isinstance(output, Mapping):
            picked = getattr(output, self.select)
        else:
            picked = output[self.select]
        if not isinstance(picked, Tensor):
            raise TypeError(
                f"SelectOutput: select picked {_describe(picked)} from {_describe(output)}; it "
                "must pick one tensor"
            )
        return picked
