"""dnnbrain_captum: DNNBrain's interpretability algorithms as Captum attribution classes."""

from typing import TYPE_CHECKING, Any

# Exports are imported on first use (PEP 562), so that ``import dnnbrain_captum.cli`` (and so
# ``dnnbrain-captum --help``) does not import torch. A new export goes into _EXPORTS (and into
# the TYPE_CHECKING block, for type checkers).
_EXPORTS = {
    "SelectOutput": "dnnbrain_captum._utils.outputs",
    "GuidedSaliencyImage": "dnnbrain_captum.attr",
    "MaskedImage": "dnnbrain_captum.attr",
    "MaskedImages": "dnnbrain_captum.attr",
    "MinimalComponentImage": "dnnbrain_captum.attr",
    "MinimalComponents": "dnnbrain_captum.attr",
    "MinimalParcelImage": "dnnbrain_captum.attr",
    "MinimalParcels": "dnnbrain_captum.attr",
    "OccluderDiscrepancyMapping": "dnnbrain_captum.attr",
    "UpsamplingActivationMapping": "dnnbrain_captum.attr",
    "VanillaSaliencyImage": "dnnbrain_captum.attr",
    "smoothgrad_stdev": "dnnbrain_captum.attr",
    "digits_cnn": "dnnbrain_captum.models",
    "digits_images": "dnnbrain_captum.models",
    "SynthesisImage": "dnnbrain_captum.optim",
    "SynthesisResult": "dnnbrain_captum.optim",
    "random_images": "dnnbrain_captum.optim",
    "EmpiricalReceptiveField": "dnnbrain_captum.receptive_field",
    "TheoreticalReceptiveField": "dnnbrain_captum.receptive_field",
    "read_results": "dnnbrain_captum.runner",
    "run_over": "dnnbrain_captum.runner",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dnnbrain_captum' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
