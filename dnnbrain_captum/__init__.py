"""dnnbrain_captum: DNNBrain's interpretability algorithms as Captum attribution classes."""

from dnnbrain_captum._utils.outputs import SelectOutput
from dnnbrain_captum.attr import (
    GuidedSaliencyImage,
    MaskedImage,
    MaskedImages,
    MinimalComponentImage,
    MinimalComponents,
    MinimalParcelImage,
    MinimalParcels,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.optim import SynthesisImage, SynthesisResult, random_images
from dnnbrain_captum.receptive_field import EmpiricalReceptiveField, TheoreticalReceptiveField
from dnnbrain_captum.runner import read_results, run_over

__version__ = "0.1.0"

__all__ = [
    "EmpiricalReceptiveField",
    "GuidedSaliencyImage",
    "MaskedImage",
    "MaskedImages",
    "MinimalComponentImage",
    "MinimalComponents",
    "MinimalParcelImage",
    "MinimalParcels",
    "OccluderDiscrepancyMapping",
    "SelectOutput",
    "SynthesisImage",
    "SynthesisResult",
    "TheoreticalReceptiveField",
    "UpsamplingActivationMapping",
    "VanillaSaliencyImage",
    "__version__",
    "digits_cnn",
    "digits_images",
    "random_images",
    "read_results",
    "run_over",
    "smoothgrad_stdev",
]
