"""Receptive fields: theoretical (graph analysis of any model) and empirical."""

from dnnbrain_captum.receptive_field.empirical import (
    EmpiricalReceptiveField,
    EmpiricalRF,
    occlusion_pixel_map,
)
from dnnbrain_captum.receptive_field.theoretical import (
    LayerReceptiveField,
    ReceptiveFieldTable,
    TheoreticalReceptiveField,
    UnsupportedOperationError,
)

__all__ = [
    "EmpiricalRF",
    "EmpiricalReceptiveField",
    "LayerReceptiveField",
    "ReceptiveFieldTable",
    "TheoreticalReceptiveField",
    "UnsupportedOperationError",
    "occlusion_pixel_map",
]
