"""DNNBrain layer names (``conv5``, ``conv5_relu``, ``fc3`` ...) for the models DNNBrain shipped.

DNNBrain named the layers of AlexNet and VGG sequentially: every convolution of ``features``
opens a new ``convK`` and the batch norm, ReLU and max-pool that follow it are ``convK_bn``,
``convK_relu`` and ``convK_maxpool``; every ``Linear`` of ``classifier`` opens ``fcK`` and the
ReLU after it is ``fcK_relu``. Dropouts are never named. The same rule names the bundled digits
model. DNNBrain's VGG19_bn table swapped ``conv1_relu`` and ``conv1_bn``; the table built here
follows the modules, so ``conv1_bn`` is the batch norm.
"""

from __future__ import annotations

from torch import nn

__all__ = ["dnnbrain_aliases", "supports_aliases"]


def _alias_classes() -> tuple[type[nn.Module], ...]:
    from torchvision.models import VGG, AlexNet

    from dnnbrain_captum.models.digits import DigitsCNN

    return (AlexNet, VGG, DigitsCNN)


def supports_aliases(model: nn.Module) -> bool:
    """Whether ``model`` is one of the architectures with DNNBrain layer names.

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    bool
        True for torchvision ``AlexNet`` and ``VGG`` models and the bundled digits CNN.
    """
    return isinstance(model, _alias_classes())


def _name_block(
    block: nn.Module, prefix: str, opener: type[nn.Module], stem: str, table: dict[str, str]
) -> None:
    count = 0
    for child_name, child in block.named_children():
        path = f"{prefix}.{child_name}"
        if isinstance(child, opener):
            count += 1
            table[f"{stem}{count}"] = path
        elif count == 0:
            continue
        elif isinstance(child, nn.ReLU):
            table[f"{stem}{count}_relu"] = path
        elif isinstance(child, nn.BatchNorm2d):
            table[f"{stem}{count}_bn"] = path
        elif isinstance(child, nn.MaxPool2d):
            table[f"{stem}{count}_maxpool"] = path


def dnnbrain_aliases(model: nn.Module) -> dict[str, str]:
    """DNNBrain's layer names of ``model``, mapped to dotted module paths.

    Parameters
    ----------
    model : nn.Module
        A torchvision ``AlexNet``/``VGG`` or the bundled digits CNN; any other model has no
        aliases and gives an empty dictionary.

    Returns
    -------
    dict of str to str
        Alias (``"conv5"``) to module path (``"features.10"``), in network order.

    Examples
    --------
    >>> from torchvision.models import alexnet
    >>> table = dnnbrain_aliases(alexnet())
    >>> table["conv5"], table["conv5_relu"], table["conv5_maxpool"], table["fc3"]
    ('features.10', 'features.11', 'features.12', 'classifier.6')
    """
    if not supports_aliases(model):
        return {}
    table: dict[str, str] = {}
    _name_block(model.features, "features", nn.Conv2d, "conv", table)
    _name_block(model.classifier, "classifier", nn.Linear, "fc", table)
    return table
