"""Attribution classes: saliency, upsampling, occlusion, masked and minimal images."""

from dnnbrain_captum.attr.occlusion import OccluderDiscrepancyMapping
from dnnbrain_captum.attr.saliency import (
    GuidedSaliencyImage,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum.attr.upsampling import UpsamplingActivationMapping

__all__ = [
    "GuidedSaliencyImage",
    "OccluderDiscrepancyMapping",
    "UpsamplingActivationMapping",
    "VanillaSaliencyImage",
    "smoothgrad_stdev",
]
