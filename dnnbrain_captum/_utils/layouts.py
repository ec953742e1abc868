"""The one rule for layer outputs: channels-first is read as channels, anything else is
rearranged by a known layout or refused.

Every class that explains a layer reads its output as ``(N, C, ...)``: channel ``c`` is
``output[:, c]`` and unit ``(c, i, j)`` is ``output[:, c, i, j]``. Transformers and modern CNNs
produce other layouts, which would silently be read wrongly (a ViT's ``(N, 197, 768)``
would give "channel" 5 = token 5). So the layout of a layer's output is *established*, never
guessed:

1. ``reshape_transform`` given: the user's callable maps the output to ``(N, C, ...)``.
2. Otherwise, where the model is an ``nn.Module`` without hooks of its own and the input is
   an image batch, one shape-only pass of the receptive-field analysis
   (:func:`~dnnbrain_captum.receptive_field._analysis.trace_model`, no arithmetic, parameters
   untouched) follows the input's H and W axes through every reshape and permute up to the
   layer, and says where they are in its output:

   * ``(N, C, H, W)``: channels-first, read as it is;
   * ``(N, H, W, C)`` (Swin and MaxViT stages, ConvNeXt blocks between their permutes,
     any Linear/LayerNorm applied to a channels-last map): permuted to ``(N, C, H, W)``;
   * ``(N, T, D)`` with the H x W grid flattened along the tokens after ``k`` extra tokens
     (torchvision's ViT encoder blocks: ``k = 1``, the class token): the extra tokens are
     dropped and the patch tokens put on their grid, ``(N, D, H, W)``;
   * ``(N, K)``: K channels (a Linear layer's neurons).
3. When that pass cannot run (a plain function, extra forward arguments, models with hooks,
   an operation the analysis cannot follow), the layer's type decides: 2-D outputs are
   channels; a ``Linear``/``LayerNorm``/attention layer with a 3-D or larger output is
   features-last and refused; a 4-D output of any other layer is read channels-first (as
   every CNN produces); a 3-D or 5-D output is read channels-first only from layers that are
   channels-first by definition (convolutions, pooling, batch norm).

Anything else raises ``ValueError`` naming the layer, the shape and the way out.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = [
    "Layout",
    "ReshapeTransform",
    "check_reshape_transform",
    "grid_view",
    "reads_channels_first",
    "resolve_layout",
]

ReshapeTransform = Callable[[Any], Tensor]

_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
_FEATURES_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_WAY_OUT = (
    "pass reshape_transform=f with f(output) -> (N, C, H, W), e.g. "
    "lambda out: out.permute(0, 3, 1, 2) for an (N, H, W, C) map"
)


@dataclass(frozen=True)
class Layout:
    """How a layer's output becomes channels-first.

    Attributes
    ----------
    kind : str
        ``"channels_first"``, ``"channels_last"``, ``"tokens"``, ``"custom"`` (the user's
        ``reshape_transform``) or ``"refused"``.
    where : str
        The layer, for messages (``"layer 'features.3' (Sequential)"``).
    reason : str
        Why the layout was chosen or refused.
    grid : (int, int) or None
        The (H, W) grid of a channels-last or token layout.
    extra_tokens : int
        Tokens before the grid (a class token) of a token layout.
    token_axis : int
        Axis of the tokens (1 for ``(N, T, D)``, 2 for ``(N, D, T)``).
    """

    kind: str
    where: str
    reason: str = ""
    grid: tuple[int, int] | None = None
    extra_tokens: int = 0
    token_axis: int = 1
    transform: ReshapeTransform | None = None
    layer_type: type = object

    def resolved(self, output: Any) -> Layout:
        """A ``"static"`` layout decided from the layer's type and the output's rank."""
        if self.kind != "static":
            return self
        if not isinstance(output, Tensor) or output.dim() <= 2:
            return Layout("channels_first", self.where)
        name = self.layer_type.__name__
        if issubclass(self.layer_type, _FEATURES_LAST):
            reason = (
                f"{name} layers put the features last, and the grid of this output "
                "could not be established"
            )
        elif output.dim() == 4 or issubclass(self.layer_type, _CHANNELS_FIRST):
            return Layout("channels_first", self.where)
        else:
            reason = (
                f"a {output.dim()}-D output of a {name} may hold tokens or channels, "
                "and its layout could not be established"
            )
        return Layout("refused", self.where, reason)

    @property
    def is_identity(self) -> bool:
        """Whether the output is read as it is (channels-first, no transform)."""
        return self.kind == "channels_first"

    def __call__(self, output: Any) -> Any:
        """The layer output in channels-first layout; raises ``ValueError`` if impossible."""
        if self.kind == "custom":
            assert self.transform is not None
            return _check_custom(self.transform(output), output, self.where)
        if self.kind == "static":
            return self.resolved(output)(output)
        if not isinstance(output, Tensor) or self.kind == "channels_first":
            return output
        shape = tuple(output.shape)
        if self.kind == "channels_last" and output.dim() == 4 and shape[1:3] == self.grid:
            return output.permute(0, 3, 1, 2)
        if self.kind == "tokens" and output.dim() == 3 and self.grid is not None:
            h, w = self.grid
            if shape[self.token_axis] == self.extra_tokens + h * w:
                tokens = output.narrow(self.token_axis, self.extra_tokens, h * w)
                if self.token_axis == 1:
                    tokens = tokens.transpose(1, 2)
                return tokens.reshape(shape[0], -1, h, w)
        reason = self.reason or f"its {self.kind.replace('_', '-')} layout does not fit"
        raise ValueError(
            f"the output of {self.where} has shape {shape}, which is not channels-first "
            f"(N, C, ...): {reason}. Channels would be read wrongly; {_WAY_OUT}"
        )


def _check_custom(result: Any, output: Any, where: str) -> Tensor:
    n = _batch_size(output)
    if not isinstance(result, Tensor) or result.dim() < 2 or (n is not None and len(result) != n):
        got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
        raise ValueError(
            f"reshape_transform must map the output of {where} to a tensor (N, C, ...) with "
            f"N = {n}, got {got}"
        )
    return result


def _batch_size(output: Any) -> int | None:
    if isinstance(output, Tensor):
        return int(output.shape[0]) if output.dim() else None
    if isinstance(output, (tuple, list)) and output:
        return _batch_size(output[0])
    return None


def check_reshape_transform(value: Any) -> ReshapeTransform | None:
    """``reshape_transform`` as given (a callable or None), else ``TypeError``."""
    if value is not None and not callable(value):
        raise TypeError(
            "reshape_transform must be a callable f(layer_output) -> Tensor (N, C, ...) or "
            f"None, got {type(value).__name__}"
        )
    return value


# (model, layer) -> {(input shape, on_input): Layout}; weak keys, so nothing is kept alive.
_CACHE: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, dict]] = (
    weakref.WeakKeyDictionary()
)


def resolve_layout(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Sequence[Tensor],
    reshape_transform: ReshapeTransform | None = None,
    on_input: bool = False,
    additional_forward_args: Any = None,
) -> Layout:
    """The layout of ``layer``'s output (or input) for this input shape (module docstring).

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module
        The explained layer.
    inputs : sequence of Tensor
        The model's inputs (only their shapes are used).
    reshape_transform : callable, optional
        The user's transform; when given it is the layout.
    on_input : bool
        The layout of the layer's input instead of its output.
    additional_forward_args : Any
        The model's extra arguments (the shape-only pass is skipped when there are any).

    Returns
    -------
    Layout
        Call it on the layer's output to get the channels-first tensor.
    """
    if reshape_transform is not None:
        where = _describe(forward_func, layer, on_input)
        return Layout("custom", where, transform=reshape_transform)
    traceable = (
        isinstance(forward_func, nn.Module)
        and additional_forward_args is None
        and len(inputs) == 1
        and inputs[0].dim() == 4
    )
    static = Layout("static", _describe(forward_func, layer, on_input), layer_type=type(layer))
    if not traceable:
        return static
    key = (tuple(int(s) for s in inputs[0].shape[1:]), on_input)
    per_model = _CACHE.setdefault(forward_func, weakref.WeakKeyDictionary())
    per_layer = per_model.setdefault(layer, {})
    if key not in per_layer:
        if _has_hooks(forward_func):  # hooks would run on the shape-only pass: do not trace
            return static
        where = _describe(forward_func, layer, on_input)
        per_layer[key] = _traced_layout(forward_func, layer, key[0], on_input, where)
    return per_layer[key]


def _traced_layout(
    model: nn.Module, layer: nn.Module, size: tuple[int, ...], on_input: bool, where: str
) -> Layout:
    from dnnbrain_captum.receptive_field._analysis import trace_model
    from dnnbrain_captum.receptive_field._states import Spatial, Tokens

    try:
        trace = trace_model(model, (size[0], size[1], size[2]), layer, on_input)
    except Exception:  # the analysis cannot follow the model: decide by the layer's type
        return Layout("static", where, layer_type=type(layer))
    state = trace.stop_state
    if trace.inside_attention:
        return Layout(
            "refused",
            where,
            "it lies inside an attention module, whose tensors "
            "are windows or partitions of the grid rather than the grid",
        )
    if isinstance(state, Spatial):
        grid = (state.axes[0].n, state.axes[1].n)
        if state.dims == (2, 3):
            return Layout("channels_first", where)
        if state.dims == (1, 2):
            return Layout("channels_last", where, "it is (N, H, W, C)", grid)
        return Layout("refused", where, f"its grid lies on axes {state.dims}")
    if isinstance(state, Tokens):
        grid = (state.axes[0].n, state.axes[1].n)
        if state.dim in (1, 2):
            return Layout("tokens", where, "", grid, len(state.prefix), state.dim)
        return Layout("refused", where, f"its tokens lie on axis {state.dim} (sequence first)")
    return Layout("static", where, layer_type=type(layer))


def _has_hooks(model: nn.Module) -> bool:
    modules = nn.modules.module
    if getattr(modules, "_global_forward_hooks", None) or getattr(
        modules, "_global_forward_pre_hooks", None
    ):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _describe(forward_func: Any, layer: nn.Module, on_input: bool) -> str:
    path = None
    if isinstance(forward_func, nn.Module):
        path = next((name for name, m in forward_func.named_modules() if m is layer), None)
    name = f"layer {path!r} ({type(layer).__name__})" if path else f"layer {type(layer).__name__}"
    return f"the input of {name}" if on_input else name


def reads_channels_first(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Sequence[Tensor],
    reshape_transform: ReshapeTransform | None = None,
) -> bool:
    """Whether the layer's output is read as it is, channels-first (no transform at all).

    For fast paths that index the raw output as ``(N, C, H, W)`` (incremental occlusion).
    """
    if reshape_transform is not None:
        return False
    layout = resolve_layout(forward_func, layer, inputs)
    if layout.kind == "static":
        return not issubclass(layout.layer_type, _FEATURES_LAST)
    return layout.is_identity


def grid_view(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Sequence[Tensor],
    tensor: Tensor,
    on_input: bool = False,
) -> Tensor:
    """``tensor`` (shaped like ``layer``'s output, e.g. a gradient) on the layer's grid.

    A channels-last or token layout established by the shape-only pass is applied (the
    gradient of extra tokens, such as a class token, is left out); in every other case the
    tensor is returned as it is, in the layer's own layout.
    """
    layout = resolve_layout(forward_func, layer, inputs, None, on_input)
    if layout.kind in ("channels_last", "tokens"):
        return layout(tensor)
    return tensor
