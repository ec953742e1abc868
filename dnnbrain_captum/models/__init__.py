"""Bundled model and images, and DNNBrain's layer-alias tables."""

from dnnbrain_captum.models.aliases import dnnbrain_aliases, supports_aliases
from dnnbrain_captum.models.digits import DigitsCNN, digits_cnn, digits_images

__all__ = ["DigitsCNN", "digits_cnn", "digits_images", "dnnbrain_aliases", "supports_aliases"]
