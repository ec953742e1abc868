# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How little of the image does a unit need? Masked and minimal images
#
# Three ways to strip an image down to what drives a channel or a class:
#
# * `MaskedImage` — a tight mask: the convex hull of the image's high-contrast pixels,
#   blurred, then eroded as far as the target keeps 90 % of its value on the hull image
#   (Walker et al. 2019, who masked each unit's synthesised image; DNNBrain's `put_mask`);
# * `MinimalParcelImage` — the fewest superpixels that keep the target up (Ullman et al. 2016;
#   DNNBrain's minimal image, with its SLIC/quickshift and "fitting curve" bugs fixed);
# * `MinimalComponentImage` — the same search over PCA/ICA components of the image (a stub in
#   DNNBrain).
#
# All three are batched over images and candidates and stop the forward pass at the layer.
#
# **Findings checked below:** the tight mask of an image synthesised for a conv3 unit covers
# less than half of the image; a few superpixels — fewer than half of them — keep at least
# 90 % of each digit's class logit.

# %%
import os
from pathlib import Path

import torch

from dnnbrain_captum import MaskedImage, MinimalComponentImage, MinimalParcelImage
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.optim import SynthesisImage, random_images
from dnnbrain_captum.visualization import minimal_image_figure, show, synthesis_grid

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
model = digits_cnn()
images, labels = digits_images(n=2 if FAST else 6)
classes = model(images).argmax(dim=1)

# %% [markdown]
# ## Synthesise, then mask (Walker et al. 2019)
#
# Walker et al. synthesised the image that drives a unit most, then asked which part of it
# the unit needs. Here: six conv3 units (0-based `(channel, row, column)`, the middle of the
# 8 × 8 map) get a synthesised image each, and `MaskedImage` masks each image for its own
# unit. `return_masks=True` also gives the mask, the activation reached, the activation on
# the un-eroded hull image (the *baseline*) and the number of erosions.

# %%
units = [(c, 4, 4) for c in (0, 5, 9, 14, 20, 33)]
mei = SynthesisImage(model, "conv3").attribute(
    random_images(6, 32, seed=2), target=units, n_iter=16 if FAST else 64
)
masked = MaskedImage(model, "conv3").attribute(mei, target=units, return_masks=True)
area = masked.masks.mean(dim=(1, 2, 3))
print("erosions:", masked.n_erosions.tolist())
print("activation / hull activation:", (masked.activation / masked.baseline).tolist())
print("share of the image under the mask:", area.tolist())
assert (masked.activation >= 0.9 * masked.baseline).all()  # the stopping rule
assert (area < 0.5).all()  # the finding: each unit needs less than half of its image
fig = synthesis_grid(
    torch.cat([mei, masked.masks.expand(-1, 3, -1, -1), masked.images]).clamp(0, 1),
    [f"unit ({c}, 4, 4)" for c, _, _ in units]
    + [f"mask: {a:.0%} of pixels" for a in area.tolist()]
    + [f"masked: {r:.0%} of hull" for r in (masked.activation / masked.baseline).tolist()],
    ncols=6,
    title="synthesised images (top), their tight masks (middle), masked (bottom)",
)
show(fig, "05_masked_synthesis")

# %% [markdown]
# The same call masks any image, e.g. each digit for its predicted class (no layer):
# `MaskedImage(model).attribute(images, target=classes)`.

# %% [markdown]
# ## Minimal image from superpixels
#
# The image is cut into superpixels (`segmentation="felzenszwalb"`, `"slic"` or
# `"quickshift"`, options as keywords in `segmentation_kwargs`, or your own `feature_mask`).
# Searches: `"max"` (the best prefix of the ranking of single parcels; DNNBrain's, which
# looked at 10 prefixes: `max_parcels=10`), `"fitting_curve"` (where the best-activation
# curve saturates), `"threshold"` (the shortest prefix keeping `activation_ratio` of the
# original) and `"removal"` (remove parcels while the target keeps that ratio).

# %%
parcels = MinimalParcelImage(model).attribute(
    images,
    target=classes,
    segmentation="slic",
    segmentation_kwargs={"n_segments": 30},
    search_criterion="removal",
    activation_ratio=0.9,
)
for k in range(images.shape[0]):
    print(
        f"digit {int(labels[k])}: {int(parcels.n_selected[k])} of {int(parcels.n_parcels[k])}"
        f" parcels keep {float(parcels.activation[k] / parcels.original_activation[k]):.0%}"
    )
assert (parcels.activation >= 0.9 * parcels.original_activation).all()  # the finding
assert (2 * parcels.n_selected < parcels.n_parcels).all()
fig = minimal_image_figure(
    images[0],
    parcels.images[0],
    parcels.masks[0].float(),
    titles=(
        "original",
        f"minimal image: {int(parcels.n_selected[0])} of {int(parcels.n_parcels[0])} parcels",
        "kept parcels",
    ),
)
show(fig, "05_minimal_parcels")

# %% [markdown]
# The same for an inner channel, conv5's channel 3 (pooled by its largest unit,
# `activation_criterion="max"`), with the fitted-curve search: the number of parcels where the
# best activation reachable with k parcels levels off.

# %%
curve = MinimalParcelImage(model, "conv5").attribute(
    images, target=3, segmentation="felzenszwalb", search_criterion="fitting_curve"
)
print("conv5 channel 3, fitting curve:", curve.n_selected.tolist(), "parcels")

# %% [markdown]
# ## Minimal image from components
#
# Each image is decomposed on its own into PCA (or FastICA) components of its 4 × 4 tiles;
# the minimal image is rebuilt from the mean and the fewest components that keep the class.

# %%
components = MinimalComponentImage(model).attribute(
    images, target=classes, decomposition="pca", patch_size=4, search_criterion="threshold"
)
print("components kept:", components.n_selected.tolist(), "of", components.selected.shape[1])
fig = minimal_image_figure(
    images[0],
    components.images[0].clamp(0, 1),
    titles=("original", f"mean + {int(components.n_selected[0])} PCA components"),
)
show(fig, "05_minimal_components")

# %% [markdown]
# ## An ImageNet model
#
# DNNBrain's minimal-image example was AlexNet conv5 channel 122 (1-based: 121) with
# felzenszwalb superpixels. For an ImageNet-normalised model the default fill value 0.0 is
# the mean pixel. This cell runs when AlexNet's weights are in the torch hub cache.

# %%
import torchvision  # noqa: E402

weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
if cached.is_file():
    alexnet = torchvision.models.alexnet(weights=weights).eval()
    photo = weights.transforms()(torch.rand(3, 256, 256)).unsqueeze(0)  # use your own image
    alex = MinimalParcelImage(alexnet, "conv5").attribute(photo, target=121, max_parcels=10)
    print("AlexNet conv5 channel 121:", int(alex.n_selected[0]), "parcels")
else:
    print(f"skipped: {cached} is not on this machine")
