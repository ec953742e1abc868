"""Whether a traced graph computes what eager execution computes: in-place writes and aliases.

``torch.fx`` records an in-place operation (``nn.ReLU(inplace=True)``, ``x.relu_()``,
``h += y``, ``F.relu(h, inplace=True)``, ``x[...] = v``) as a node whose output is a new
value, but in eager execution the write also changes every other tensor sharing the storage
of the written one: a skip connection that saved ``h`` before ``relu_(h)`` sees the rectified
values. The incremental engine evaluates the graph value by value (every operation out of
place), so it equals eager execution exactly when no in-place write can reach a value that
something else reads. This module proves that, conservatively:

for every node that writes in place into its first argument, the written value and every value
it may alias (walking back through operations that may return a view or the same tensor) has
exactly one user — the next step of that chain — and none of them is the model's input or a
parameter or buffer. Anything else raises :class:`IncrementalUnsupported`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from torch import fx, nn

from dnnbrain_captum._spatial import SAME_STORAGE, kind_of, module_op, op_name
from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported

__all__ = ["check_no_hidden_writes"]

_INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
    operator.setitem,
}
# Kinds of operation (the geometry core's classification) that return a new tensor, unless
# they write in place (checked first) or may return their input itself (SAME_STORAGE).
_FRESH_KINDS = {"window", "value", "gate", "norm", "adaptive"}
_FRESH_NAMES = {
    "linear",
    "softmax",
    "cat",
    "concat",
    "concatenate",
    "batch_norm",
    "prelu",
    "local_response_norm",
}


def _fresh(name: str | None) -> bool:
    """Whether the operation ``name`` always returns new storage."""
    in_place = (name or "_").endswith("_") and not (name or "").endswith("__")
    if name is None or name in SAME_STORAGE or in_place or name.startswith("__i"):
        return False
    return name in _FRESH_NAMES or kind_of(name) in _FRESH_KINDS


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def written_argument(node: fx.Node, model: nn.Module) -> fx.Node | None:
    """The value ``node`` writes into in place, or None when it writes nothing.

    Raises
    ------
    IncrementalUnsupported
        For an ``out=`` argument (a write into an arbitrary tensor).
    """
    if node.op not in ("call_module", "call_function", "call_method") or not node.args:
        return None
    if "out" in node.kwargs:
        raise IncrementalUnsupported(f"{node.name} writes into an out= tensor")
    first = node.args[0]
    if not isinstance(first, fx.Node):
        return None
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return first if getattr(module, "inplace", False) is True else None
    name = _name(node.target)
    in_place = (
        node.target in _INPLACE_OPERATORS
        or (name.endswith("_") and not name.endswith("__"))
        or node.kwargs.get("inplace") is True
        # A positional True may be an ``inplace`` flag (``F.relu(x, True)``): assume it is.
        or (node.op == "call_function" and any(a is True for a in node.args[1:]))
    )
    return first if in_place else None


def _may_alias_input(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node``'s output may share storage with one of its tensor inputs."""
    if node.op in ("placeholder", "get_attr"):
        return False
    if node.op == "call_module":
        return not _fresh(module_op(model.get_submodule(str(node.target))))
    if node.op in ("call_function", "call_method"):
        return not _fresh(op_name(node.target))
    return True


def _storage_chain(written: fx.Node, model: nn.Module) -> list[fx.Node]:
    """``written`` and every value it may alias, walking back through possible views."""
    chain: list[fx.Node] = []
    stack = [written]
    while stack:
        node = stack.pop()
        if node in chain:
            continue
        chain.append(node)
        target = written_argument(node, model)
        if target is not None:
            stack.append(target)  # an in-place op returns (an alias of) what it wrote into
        elif _may_alias_input(node, model):
            stack.extend(node.all_input_nodes)
    return chain


def check_no_hidden_writes(nodes: Sequence[fx.Node], model: nn.Module) -> None:
    """Refuse graphs where an in-place write can change a value that something else reads.

    Parameters
    ----------
    nodes : sequence of fx.Node
        The traced nodes that run before the target (in execution order).
    model : nn.Module
        The traced model (to look up the modules of ``call_module`` nodes).

    Raises
    ------
    IncrementalUnsupported
        Naming the writing operation and the value it would change behind the graph's back.
    """
    for node in nodes:
        written = written_argument(node, model)
        if written is None:
            continue
        for value in _storage_chain(written, model):
            what = f"{node.name} writes in place into {value.name}"
            if value.op == "placeholder":
                raise IncrementalUnsupported(f"{what}, which is (a view of) the model's input")
            if value.op == "get_attr":
                raise IncrementalUnsupported(f"{what}, which is (a view of) a parameter or buffer")
            if len(value.users) != 1:
                others = sorted(u.name for u in value.users)
                raise IncrementalUnsupported(
                    f"{what} (an in-place operation), which is also read by {others}: the "
                    "traced graph could differ from eager execution"
                )
