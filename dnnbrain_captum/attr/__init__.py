"""Attribution classes: saliency, upsampling, occlusion, masked and minimal images."""

from dnnbrain_captum.attr.masked import MaskedImage, MaskedImages
from dnnbrain_captum.attr.minimal import MinimalParcelImage, MinimalParcels
from dnnbrain_captum.attr.minimal_component import MinimalComponentImage, MinimalComponents
from dnnbrain_captum.attr.occlusion import OccluderDiscrepancyMapping
from dnnbrain_captum.attr.saliency import (
    GuidedSaliencyImage,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum.attr.upsampling import UpsamplingActivationMapping

__all__ = [
    "GuidedSaliencyImage",
    "MaskedImage",
    "MaskedImages",
    "MinimalComponentImage",
    "MinimalComponents",
    "MinimalParcelImage",
    "MinimalParcels",
    "OccluderDiscrepancyMapping",
    "UpsamplingActivationMapping",
    "VanillaSaliencyImage",
    "smoothgrad_stdev",
]
