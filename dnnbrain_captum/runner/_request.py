"""What identifies a run: the attribution, its arguments, the targets and the stimulus ids,
in the JSON form recorded in the manifest's ``request`` and compared on every rerun."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def _sha256_tensor(value: Tensor | np.ndarray) -> str:
    array = value.detach().cpu() if isinstance(value, Tensor) else torch.as_tensor(value)
    if array.dtype == torch.bfloat16:
        array = array.float()
    return hashlib.sha256(np.ascontiguousarray(array.numpy()).reshape(-1)).hexdigest()


def _model_of(attribution: Any) -> Any:
    inner = getattr(attribution, "attribution_method", None)
    for obj in (attribution, inner):
        model = getattr(obj, "forward_func", None)
        if model is not None:
            return model
    return None


def _model_sha256(model: Any) -> str | None:
    if not isinstance(model, nn.Module):
        return None
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(_sha256_tensor(value).encode())
    return digest.hexdigest()


def _qualname(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _layer_name(model: Any, layer: Any) -> str | None:
    if layer is None:
        return None
    if isinstance(model, nn.Module) and isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
    return repr(layer) if not isinstance(layer, nn.Module) else type(layer).__name__


def _describe(attribution: Any) -> dict[str, Any]:
    inner = getattr(attribution, "attribution_method", None)
    model = _model_of(attribution)
    layer = getattr(attribution, "layer", None)
    if layer is None and inner is not None:
        layer = getattr(inner, "layer", None)
    return {
        "class": _qualname(attribution),
        "inner_class": _qualname(inner) if inner is not None else None,
        "layer": _layer_name(model, layer),
        "model": _qualname(model) if model is not None else None,
        "model_sha256": _model_sha256(model),
    }


def _jsonable(value: Any, model: Any) -> Any:
    """A JSON form of an ``attribute`` argument that changes when the argument changes."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim == 0:
            return {"scalar": _jsonable(value.item(), model), "dtype": str(value.dtype)}
        return {
            "tensor_sha256": _sha256_tensor(value),
            "shape": list(value.shape),
            "dtype": str(value.dtype),
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, model) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, model) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, nn.Module):
        return {"module": _layer_name(model, value)}
    if callable(value):
        return {
            "callable": getattr(value, "__module__", "?")
            + "."
            + getattr(value, "__qualname__", type(value).__qualname__)
        }
    return {"repr": repr(value)}


def _normalise_targets(targets: Any, n: int) -> tuple[str, Any, Any]:
    """(kind, value, json): kind "none", "single" (one for all) or "per_item" (a list)."""
    if targets is None:
        return "none", None, None
    if isinstance(targets, np.ndarray):
        targets = torch.as_tensor(targets)
    if isinstance(targets, Tensor):
        if targets.dim() == 0:
            value = targets.item()
            return "single", value, value
        if targets.dim() == 1 or (targets.dim() == 2 and targets.shape[0] == n):
            targets = [t if isinstance(t, int) else tuple(t) for t in targets.tolist()]
        else:
            raise ValueError(
                f"targets tensor must have one entry per item ({n}), got shape "
                f"{tuple(targets.shape)}"
            )
    if isinstance(targets, list):
        if len(targets) != n:
            raise ValueError(
                f"targets has {len(targets)} entries but the data set has {n} items; give one "
                "target per item, or one int / tuple / callable for all"
            )
        value = [tuple(t) if isinstance(t, (list, tuple)) else t for t in targets]
        for t in value:
            if isinstance(t, bool) or not isinstance(t, (int, tuple)):
                raise TypeError(f"per-item targets must be ints or tuples of ints, got {t!r}")
        return "per_item", value, [list(t) if isinstance(t, tuple) else t for t in value]
    if isinstance(targets, bool):
        raise TypeError(f"targets must be an int, tuple, callable or sequence, got {targets!r}")
    if isinstance(targets, int):
        return "single", targets, targets
    if isinstance(targets, tuple):
        return "single", targets, list(targets)
    if callable(targets):
        return "single", targets, _jsonable(targets, None)
    raise TypeError(
        f"targets must be None, an int, a tuple, a callable, or one per item (list, tensor, "
        f"array), got {type(targets).__name__}"
    )


def _ids_of(data: Any, n: int, ids: Sequence[Any] | None) -> list[str]:
    if ids is None:
        ids = getattr(data, "ids", None)
    if ids is None:
        return [str(i) for i in range(n)]
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but the data set has {n} items")
    return ids
