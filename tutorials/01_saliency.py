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
# # Saliency images: vanilla, guided and SmoothGrad
#
# A saliency image is the gradient of one number — a class logit, or the mean activation
# of one channel of an inner layer — with respect to the input pixels. DNNBrain called these
# `VanillaSaliencyImage` and `GuidedSaliencyImage`; here they are Captum attribution classes,
# so they take a model and a layer at construction and images and a `target` in
# `attribute()`, and they work inside Captum's `NoiseTunnel`.
#
# Everything below runs offline in a few seconds on the bundled digits CNN (an AlexNet-shaped
# network with DNNBrain's layer names `conv1` … `conv5`, `fc1` … `fc3`). **Channels are
# 0-based** (DNNBrain counted from 1).
#
# **Finding checked below:** the gradient of one conv5 unit is exactly zero outside that
# unit's theoretical receptive field — saliency only ever sees what the unit can see.
#
# Opened as a notebook (`jupytext --to notebook tutorials/01_saliency.py`, see the README),
# each figure appears under its cell; run as a script, the figures are saved into
# `./figures/`.

# %%
import os
from pathlib import Path

import torch
from captum.attr import NoiseTunnel, Saliency

from dnnbrain_captum import GuidedSaliencyImage, VanillaSaliencyImage, smoothgrad_stdev
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.receptive_field import TheoreticalReceptiveField
from dnnbrain_captum.visualization import saliency_figure, show, synthesis_grid

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
torch.manual_seed(0)

model = digits_cnn()  # eval mode, 99 % held-out accuracy
images, labels = digits_images(n=4)  # (4, 3, 32, 32) in [0, 1]
predicted = model(images).argmax(dim=1)
print("labels   ", labels.tolist())
print("predicted", predicted.tolist())

# %% [markdown]
# ## The gradient of a class logit
#
# With `layer=None` the target is Captum's: an index into the model output. With
# `abs=False` (our default, signed like DNNBrain) the result equals Captum's `Saliency`.

# %%
vanilla = VanillaSaliencyImage(model)
grads = vanilla.attribute(images, target=predicted)  # (4, 3, 32, 32)
captum_grads = Saliency(model).attribute(images, target=predicted, abs=False)
print("same as captum.attr.Saliency:", torch.allclose(grads, captum_grads))
fig = saliency_figure(grads[0], images[0], title=f"class {int(predicted[0])}")
show(fig, "01_class_saliency")

# %% [markdown]
# ## The gradient of an inner channel
#
# Name a layer — a module, a dotted path (`"features.10"`) or a DNNBrain alias (`"conv5"`) —
# and the target becomes a channel of that layer, reduced to one number per image by its
# spatial mean (DNNBrain's choice; `reduction="max"` or `"sum"` also exist). A `(c, i, j)`
# tuple picks one unit, a list gives one channel per image. The forward pass stops at the
# layer: nothing after `conv5` runs.

# %%
with torch.no_grad():
    conv5_relu = model.features[:12](images).mean(dim=(2, 3))  # conv5_relu = features.11
channel = int(conv5_relu.min(dim=0).values.argmax())  # the channel most active on all four
print("conv5 channel", channel, "mean activation per image:", conv5_relu[:, channel].tolist())
assert (conv5_relu[:, channel] > 0).all()  # active on every image shown: gradients flow
conv5_grads = VanillaSaliencyImage(model, "conv5").attribute(images, target=channel)
corner = VanillaSaliencyImage(model, "conv5").attribute(images, target=(channel, 0, 0))
print("channel gradient", tuple(conv5_grads.shape), " unit gradient", tuple(corner.shape))
(h0, h1), (w0, w1) = TheoreticalReceptiveField(model, input_size=(3, 32, 32)).find_region(
    "conv5", (0, 0)
)
seen = corner.abs().sum(dim=1) > 0  # (4, 32, 32): pixels with a non-zero gradient
inside = torch.zeros(32, 32, dtype=torch.bool)
inside[h0:h1, w0:w1] = True
print(
    f"conv5 unit (0, 0) sees rows {h0}-{h1 - 1}, columns {w0}-{w1 - 1}; its gradient is "
    f"non-zero on {seen[0].sum()} of {32 * 32} pixels"
)
assert not (seen & ~inside).any()  # the finding: nothing outside the receptive field

# %% [markdown]
# ## Guided backpropagation
#
# The guided rule lets a gradient pass back through a ReLU only where both the ReLU's input
# and the incoming gradient are positive (Springenberg et al. 2015), which gives sharper
# pictures. It works on every `nn.ReLU` module up to the explained layer, also in-place ones.

# %%
guided = GuidedSaliencyImage(model, "conv5").attribute(images, target=channel)
fig = synthesis_grid(
    torch.cat([conv5_grads.abs(), guided.abs()]),
    [f"vanilla {k}" for k in range(4)] + [f"guided {k}" for k in range(4)],
    ncols=4,
    title=f"conv5 channel {channel} (active on all four digits): |gradient|, each panel "
    "scaled on its own",
)
show(fig, "01_guided_vs_vanilla")

# %% [markdown]
# ## SmoothGrad through Captum's NoiseTunnel
#
# DNNBrain's `backprop_smooth(image, n_iter, sigma_multiplier)` meant SmoothGrad but
# overwrote the image with noise. Here SmoothGrad is Captum's `NoiseTunnel` around either
# class, and `smoothgrad_stdev` gives DNNBrain's noise level, multiplier × (max − min) of the
# input.

# %%
n_samples = 4 if FAST else 32
sigma = smoothgrad_stdev(images[:1], sigma_multiplier=0.1)
smooth = NoiseTunnel(VanillaSaliencyImage(model)).attribute(
    images[:1],
    nt_type="smoothgrad",
    nt_samples=n_samples,
    stdevs=sigma,
    target=[int(predicted[0])],
)
fig = saliency_figure(smooth[0], images[0], title=f"SmoothGrad, {n_samples} samples")
show(fig, "01_smoothgrad")

# %% [markdown]
# ## Gradients at an inner layer
#
# `to_layer=` returns the gradient at an inner layer's output; with
# `attribute_to_layer_input=True` at its input, which is what DNNBrain's `to_layer` meant
# (`to_layer="conv1_relu"` gave the gradient at conv1's output).

# %%
at_conv1 = VanillaSaliencyImage(model, "conv5").attribute(
    images, target=channel, to_layer="conv1_relu", attribute_to_layer_input=True
)
print("gradient at conv1's output:", tuple(at_conv1.shape))

# %% [markdown]
# ## An ImageNet model
#
# The same calls work on any torchvision classifier. This cell uses AlexNet's ImageNet
# weights when they are already in the torch hub cache (nothing is downloaded) and is
# skipped otherwise. DNNBrain's doormat example was fc3 channel 540 (1-based), class 539.

# %%
import torchvision  # noqa: E402

weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
if cached.is_file():
    alexnet = torchvision.models.alexnet(weights=weights).eval()
    photo = weights.transforms()(torch.rand(3, 256, 256)).unsqueeze(0)  # use your own image
    doormat = GuidedSaliencyImage(alexnet, "fc3").attribute(photo, target=539)
    print("AlexNet fc3 class 539 guided saliency:", tuple(doormat.shape))
else:
    print(f"skipped: {cached} is not on this machine")
