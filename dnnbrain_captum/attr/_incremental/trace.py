"""From a ``torch.fx`` trace to the engine's operations (and the reasons it refuses)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dnnbrain_captum._spatial import (
    kind_of,
    module_op,
    op_name,
    window_of_call,
    window_of_module,
)
from dnnbrain_captum._utils.layers import layer_path
from dnnbrain_captum.attr._incremental.mutation import check_no_hidden_writes
from dnnbrain_captum.attr._incremental.nodes import (
    Channels,
    IncrementalUnsupported,
    _AvgPool,
    _BatchNorm,
    _Cat,
    _Conv,
    _Input,
    _Merge,
    _Node,
    _Pointwise,
    _SizeKeeping,
    _Window,
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _module_pointwise(module: nn.Module) -> Callable[[Tensor, Channels], Tensor]:
    if type(module) is nn.ReLU:
        return lambda x, channels: torch.relu(x)
    if getattr(module, "inplace", False):
        return lambda x, channels: module.forward(x.clone())
    return lambda x, channels: module.forward(x)


def _batch_norm(module: nn.BatchNorm2d) -> Callable[[Tensor, Channels], Tensor]:
    def run(x: Tensor, channels: Channels) -> Tensor:
        mean, var = module.running_mean, module.running_var
        weight, bias = module.weight, module.bias
        if channels is not None:
            index = torch.tensor(channels, dtype=torch.long, device=x.device)
            mean, var = mean.index_select(0, index), var.index_select(0, index)  # type: ignore[union-attr]
            weight = None if weight is None else weight.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, module.eps)

    return run


def _convert_module(module: nn.Module, name: str) -> _Node:
    """The engine's operation for a module, from the geometry core's classification."""
    label = f"{name} ({type(module).__name__})"
    window = window_of_module(module)
    if window is not None:
        if window.op.name == "conv2d":
            if module.padding_mode != "zeros":  # type: ignore[union-attr]
                raise IncrementalUnsupported(
                    f"convolution with padding_mode={module.padding_mode!r} is not supported"
                )
            return _Conv(module)  # type: ignore[arg-type]
        if window.op.name == "avg_pool2d":
            return _AvgPool(window, module.forward)
        return _Window(window, module.forward, label)
    op = module_op(module)
    kind = kind_of(op) if op is not None else None
    if kind == "random":
        if module.training:
            raise IncrementalUnsupported(f"{label} is in training mode")
        return _Pointwise(lambda x, channels: x)
    if op == "batch_norm":
        assert isinstance(module, nn.BatchNorm2d)
        if module.training or module.running_mean is None or module.running_var is None:
            raise IncrementalUnsupported(
                f"{label} uses batch statistics (training mode or no running stats)"
            )
        return _BatchNorm(module, _batch_norm(module))
    if kind == "adaptive":
        return _SizeKeeping(module, label)
    if kind in ("value", "identity"):
        return _Pointwise(_module_pointwise(module))
    if kind == "norm":
        raise IncrementalUnsupported(f"{label} normalises with statistics over the whole map")
    raise IncrementalUnsupported(f"{label} has no known spatial footprint")


def _is_in_place(name: str, node: fx.Node) -> bool:
    """Whether the call writes into its first argument (computed on a copy here)."""
    return (
        (name.endswith("_") and not name.endswith("__"))
        or name.startswith("__i")
        or node.kwargs.get("inplace") is True
        or any(a is True for a in node.args[1:])  # a positional ``inplace=True``
    )


def _substitute(args: tuple[Any, ...], values: Sequence[Tensor], copy: bool) -> list[Any]:
    """``args`` with its graph nodes replaced by ``values`` in order (the first copied)."""
    out = []
    taken = 0
    for a in args:
        if isinstance(a, fx.Node):
            value = values[taken]
            out.append(value.clone() if copy and taken == 0 else value)
            taken += 1
        else:
            out.append(a)
    return out


def _convert_call(node: fx.Node, tensor_args: list[fx.Node]) -> _Node:
    target = node.target
    method = node.op == "call_method"
    name = op_name(target)
    label = f"{node.name} ({target if method else getattr(target, '__name__', target)})"
    args = node.args
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if not method and name in ("cat", "concat", "concatenate"):
        tensors = args[0] if args else node.kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if (
            dim in (1, -3)
            and isinstance(tensors, (list, tuple))
            and all(isinstance(t, fx.Node) for t in tensors)
        ):
            return _Cat()
        raise IncrementalUnsupported(f"{label}: only concatenation along channels is supported")
    plain = all(
        isinstance(a, fx.Node) or _is_number(a) or isinstance(a, bool) or a is None for a in args
    ) and all(_is_number(v) or isinstance(v, (bool, str)) or v is None for v in kwargs.values())
    if not plain and not (kind_of(name) == "window" and not method):
        raise IncrementalUnsupported(f"{label} has arguments that are not numbers")
    kind = kind_of(name)
    nodes = [a for a in args if isinstance(a, fx.Node)]
    if not nodes or (nodes[0] is not args[0] and kind not in ("value", "gate")):
        raise IncrementalUnsupported(f"{label} has no known spatial footprint")
    copy = _is_in_place(name, node)
    if kind == "window" and not method and len(tensor_args) == 1:
        window = window_of_call(name, args, node.kwargs)
        rest, keywords = args[1:], dict(node.kwargs)

        def clean(x: Tensor) -> Tensor:
            return target(x, *rest, **keywords)  # type: ignore[operator]

        return _AvgPool(window, clean) if name == "avg_pool2d" else _Window(window, clean, label)
    if kind == "random" and not method and name.startswith(("dropout", "alpha", "feature")):
        training = node.kwargs.get("training", args[2] if len(args) > 2 else True)
        if training is False:
            return _Pointwise(lambda x, c: x)
        raise IncrementalUnsupported(f"{label} is active (training=True)")
    if kind in ("value", "gate"):
        if method:
            call = lambda *a: getattr(a[0], name)(*a[1:], **kwargs)  # noqa: E731
        else:
            call = lambda *a: target(*a, **kwargs)  # type: ignore[operator]  # noqa: E731
        if len(nodes) > 1:
            return _Merge(lambda v: call(*_substitute(args, v, copy)))  # type: ignore[operator]
        return _Pointwise(lambda x, c: call(*_substitute(args, [x], copy)))  # type: ignore[operator]
    raise IncrementalUnsupported(f"{label} has no known spatial footprint")


@dataclass
class _Graph:
    nodes: list[_Node]
    target: int  # index of the target node


def trace(model: nn.Module) -> fx.GraphModule:
    """The model traced by ``torch.fx``.

    Raises
    ------
    IncrementalUnsupported
        When global forward hooks are registered or the model cannot be traced.
    """
    module_hooks = torch.nn.modules.module
    if getattr(module_hooks, "_global_forward_hooks", None) or getattr(
        module_hooks, "_global_forward_pre_hooks", None
    ):
        raise IncrementalUnsupported("global forward hooks are registered")
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "fall back"
        raise IncrementalUnsupported(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}"
        ) from None


def layer_node(graph_nodes: list[fx.Node], path: str) -> fx.Node:
    """The traced node whose value is the output of the layer at ``path`` (its first call)."""
    calls = [n for n in graph_nodes if n.op == "call_module" and n.target == path]
    if calls:
        return calls[0]  # run_to_layer explains the layer's first call
    if path:
        inside = [n for n in graph_nodes if path in (n.meta.get("nn_module_stack") or {})]
        members = set(inside)
        leaving = [n for n in inside if any(u not in members for u in n.users)]
        if len(leaving) == 1:
            return leaving[0]
    raise IncrementalUnsupported(f"the layer {path!r} is not one operation of the traced graph")


def analyse(model: nn.Module, layer: nn.Module) -> _Graph:
    """The operations from the input to ``layer`` in execution order.

    Raises
    ------
    IncrementalUnsupported
        With the reason, when an operation has no known spatial footprint, the model cannot be
        traced, ``layer`` is not found as one traced operation, a module has hooks, or an
        in-place operation could make the traced graph differ from eager execution.
    """
    graph_nodes = list(trace(model).graph.nodes)
    return convert(model, graph_nodes, layer_node(graph_nodes, layer_path(model, layer)))


def convert(model: nn.Module, graph_nodes: list[fx.Node], target_node: fx.Node) -> _Graph:
    """The engine's operations for the ancestors of ``target_node`` (see :func:`analyse`)."""
    check_no_hidden_writes(graph_nodes[: graph_nodes.index(target_node) + 1], model)
    placeholders = [n for n in graph_nodes if n.op == "placeholder"]
    needed: set[fx.Node] = set()
    stack = [target_node]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    if not placeholders or placeholders[0] not in needed:
        raise IncrementalUnsupported("the target layer does not depend on the input")
    index: dict[fx.Node, int] = {}
    nodes: list[_Node] = []
    for node in (n for n in graph_nodes if n in needed):  # ancestors in execution order
        converted, tensor_args = _convert_node(model, node, placeholders[0])
        converted.name = str(node.target) if node.op == "call_module" else node.name
        converted.inputs = tuple(index[a] for a in tensor_args)
        index[node] = len(nodes)
        nodes.append(converted)
    _fold_batch_norms(nodes, index[target_node])
    return _Graph(nodes, index[target_node])


def _fold_batch_norms(nodes: list[_Node], target: int) -> None:
    """Fold each eval batch norm into the convolution it alone reads (one op per patch).

    Not when the convolution is the target or is read by anything else (its own value is
    needed then).
    """
    readers = [0] * len(nodes)
    for node in nodes:
        for i in node.inputs:
            readers[i] += 1
    for node in nodes:
        if not isinstance(node, _BatchNorm):
            continue
        (i,) = node.inputs
        conv = nodes[i]
        if isinstance(conv, _Conv) and conv.folded is None and readers[i] == 1 and i != target:
            conv.fold(node.module)
            node.fold_away()


def _convert_node(model: nn.Module, node: fx.Node, image: fx.Node) -> tuple[_Node, list[fx.Node]]:
    """One traced node as the engine's operation, with the nodes it reads."""
    if node.op == "placeholder":
        if node is not image:
            raise IncrementalUnsupported(
                f"the target depends on the extra model argument {node.name!r}"
            )
        return _Input(), []
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if module._forward_hooks or module._forward_pre_hooks:
            raise IncrementalUnsupported(f"{node.target} has forward hooks")
        tensor_args = list(node.all_input_nodes)
        if len(tensor_args) != 1 or node.args[0] is not tensor_args[0]:
            raise IncrementalUnsupported(f"{node.target} takes several inputs")
        return _convert_module(module, str(node.target)), tensor_args
    if node.op in ("call_function", "call_method"):
        tensor_args = list(node.all_input_nodes)
        converted = _convert_call(node, tensor_args)
        if isinstance(converted, _Cat):
            tensor_args = list(node.args[0] if node.args else node.kwargs["tensors"])
        elif isinstance(converted, _Merge):
            tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        elif len(tensor_args) != 1:
            raise IncrementalUnsupported(f"{node.name} reads tensors outside its arguments")
        return converted, tensor_args
    raise IncrementalUnsupported(f"{node.name} ({node.op} {node.target}) is not supported")
