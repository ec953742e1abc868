"""dnnbrain_captum: DNNBrain's interpretability algorithms as Captum attribution classes."""

from dnnbrain_captum.attr import (
    GuidedSaliencyImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.runner import read_results, run_over

__version__ = "0.1.0"

__all__ = [
    "GuidedSaliencyImage",
    "OccluderDiscrepancyMapping",
    "UpsamplingActivationMapping",
    "VanillaSaliencyImage",
    "__version__",
    "digits_cnn",
    "digits_images",
    "read_results",
    "run_over",
    "smoothgrad_stdev",
]
