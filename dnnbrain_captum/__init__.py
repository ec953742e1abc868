"""dnnbrain_captum: DNNBrain's interpretability algorithms as Captum attribution classes."""

from dnnbrain_captum.attr import (
    GuidedSaliencyImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum.models import digits_cnn, digits_images

__version__ = "0.1.0"

__all__ = [
    "GuidedSaliencyImage",
    "OccluderDiscrepancyMapping",
    "UpsamplingActivationMapping",
    "VanillaSaliencyImage",
    "__version__",
    "digits_cnn",
    "digits_images",
    "smoothgrad_stdev",
]
