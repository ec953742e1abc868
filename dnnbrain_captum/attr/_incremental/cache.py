"""The analysis of a model (``torch.fx`` trace, conversion, cut) kept between calls.

Tracing and converting a model costs far more than the small sweeps users often run, so each
analysis is kept per model (weakly: the cache never keeps a model alive on its own) and per
question (a target layer, or an input shape for the output). It is reused only while the
model's *structure* is what it was: the same submodules at the same names, training flags,
hooks (global ones included), the same parameter and buffer tensors (identity, shape, dtype,
device) and the same plain attributes (numbers, strings, flags, and any per-instance
``forward``). Parameter and buffer *values* are read at run time (a folded batch norm is
folded again for every use), so changing weights in place needs no new analysis.

A failed analysis is kept too (the reason is raised again), so that ``method="auto"`` does not
trace an unsupported model on every call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch
from torch import nn

from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported

__all__ = ["cached_analysis", "model_key"]

T = TypeVar("T")
_PLAIN = (bool, int, float, str, type(None))
_MOST = 8  # analyses kept per model (one per layer or input shape)
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], dict[Hashable, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _plain(value: Any) -> Any:
    """A hashable stand-in for an attribute (identity for anything not plain)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value):
        return tuple(value)
    return id(value)


def _tensors(tensors: dict[str, torch.Tensor | None]) -> tuple[Any, ...]:
    return tuple(
        (k, None if t is None else (id(t), tuple(t.shape), t.dtype, t.device))
        for k, t in tensors.items()
    )


def model_key(model: nn.Module) -> tuple[Any, ...]:
    """What the analysis of ``model`` depends on, beyond parameter and buffer values."""
    hooks = torch.nn.modules.module
    parts: list[Any] = [
        tuple(getattr(hooks, "_global_forward_hooks", {})),
        tuple(getattr(hooks, "_global_forward_pre_hooks", {})),
    ]
    for name, module in model.named_modules(remove_duplicate=False):
        attributes = tuple(
            (k, _plain(v))
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training"
        )
        parts.append(
            (
                name,
                id(module),
                type(module),
                module.training,
                tuple(module._forward_hooks),
                tuple(module._forward_pre_hooks),
                _tensors(module._parameters),
                _tensors(module._buffers),
                attributes,
            )
        )
    return tuple(parts)


def cached_analysis(model: nn.Module, question: Hashable, analyse: Callable[[], T]) -> T:
    """``analyse()``, or its kept result for ``model`` and ``question`` (see the module doc).

    Raises
    ------
    IncrementalUnsupported
        When the analysis failed (now or when it was kept).
    """
    key = model_key(model)
    entry = _CACHE.get(model)
    if entry is None or entry[0] != key:
        entry = (key, {})
        _CACHE[model] = entry
    store = entry[1]
    if question not in store:
        try:
            store[question] = analyse()
        except IncrementalUnsupported as reason:
            store[question] = reason
        while len(store) > _MOST:
            store.pop(next(iter(store)))
    result = store[question]
    if isinstance(result, IncrementalUnsupported):
        raise IncrementalUnsupported(str(result))
    return result  # type: ignore[no-any-return]
