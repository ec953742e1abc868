"""Captum's keyword names as aliases of ours, added to a class by one decorator.

Captum's neuron classes (``NeuronGradient``, ``NeuronGuidedBackprop``, ...) call the unit to
explain ``neuron_selector`` and the switch to the layer's input ``attribute_to_neuron_input``;
our classes call them ``target`` and ``attribute_to_layer_input`` (DESIGN §3). Decorating a
class with :func:`captum_keyword_aliases` makes its ``attribute`` accept both spellings:

>>> import torch
>>> from dnnbrain_captum import VanillaSaliencyImage
>>> from dnnbrain_captum.models import digits_cnn
>>> model, x = digits_cnn(), torch.rand(1, 3, 32, 32)
>>> a = VanillaSaliencyImage(model, "conv5").attribute(x, neuron_selector=3)
>>> torch.equal(a, VanillaSaliencyImage(model, "conv5").attribute(x, target=3))
True

Passing an alias together with the name it stands for is a ``TypeError``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["CAPTUM_ALIASES", "captum_keyword_aliases"]

#: Captum's keyword → ours.
CAPTUM_ALIASES: dict[str, str] = {
    "neuron_selector": "target",
    "attribute_to_neuron_input": "attribute_to_layer_input",
}

T = TypeVar("T", bound=type)


def captum_keyword_aliases(cls: T) -> T:
    """Class decorator: ``cls.attribute`` also takes Captum's keyword names.

    Only the aliases of parameters that ``attribute`` has are added (a class without
    ``attribute_to_layer_input`` does not take ``attribute_to_neuron_input``). The wrapped
    method keeps its signature and docstring (``functools.wraps``); subclasses that do not
    override ``attribute`` inherit the aliases.

    Parameters
    ----------
    cls : type
        A class with an ``attribute`` method.

    Returns
    -------
    type
        The same class, its ``attribute`` wrapped.
    """
    method: Callable[..., Any] = cls.__dict__["attribute"]
    parameters = inspect.signature(method).parameters
    aliases = {alias: name for alias, name in CAPTUM_ALIASES.items() if name in parameters}

    def translate(owner: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        for alias, name in aliases.items():
            if alias in kwargs:
                if name in kwargs:
                    raise TypeError(
                        f"{type(owner).__name__}.attribute() got both {alias!r} (Captum's "
                        f"name) and {name!r}; pass only one of them"
                    )
                kwargs[name] = kwargs.pop(alias)
        return kwargs

    # Captum's wrappers (NoiseTunnel, ...) call ``attribute.__wrapped__`` to skip the usage
    # logger: that entry point translates the aliases too.
    inner: Callable[..., Any] = getattr(method, "__wrapped__", method)

    def unwrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        return inner(self, *args, **translate(self, kwargs))

    @functools.wraps(method)
    def attribute(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **translate(self, kwargs))

    unwrapped.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    attribute.__wrapped__ = unwrapped  # type: ignore[attr-defined]
    attribute.captum_aliases = dict(aliases)  # type: ignore[attr-defined]
    cls.attribute = attribute  # type: ignore[attr-defined]
    return cls
