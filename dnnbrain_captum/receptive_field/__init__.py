"""Receptive fields: theoretical (graph analysis of any model) and empirical."""

from dnnbrain_captum.receptive_field.theoretical import (
    LayerReceptiveField,
    ReceptiveFieldTable,
    TheoreticalReceptiveField,
    UnsupportedOperationError,
)

__all__ = [
    "LayerReceptiveField",
    "ReceptiveFieldTable",
    "TheoreticalReceptiveField",
    "UnsupportedOperationError",
]
