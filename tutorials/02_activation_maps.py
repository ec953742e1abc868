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
# # Where does a channel respond? Upsampled activation maps and occlusion
#
# Two ways to map a channel's response onto the image, both from DNNBrain:
#
# * `UpsamplingActivationMapping` interpolates the channel's own activation map to the image
#   size (one forward pass);
# * `OccluderDiscrepancyMapping` slides a small occluder over the image and records how much
#   the channel's response drops at each position (Zeiler & Fergus 2014; Zhou et al. 2015).
#
# Both are Captum attribution classes: model and layer at construction, images and a 0-based
# `target` channel in `attribute()`. Everything runs offline on the bundled digits CNN.
#
# **Finding checked below:** for every digit, the occluder position that costs the predicted
# class most lies on the digit's strokes (a window brighter than the image's average).

# %%
import os
from pathlib import Path

import torch

from dnnbrain_captum import OccluderDiscrepancyMapping, UpsamplingActivationMapping
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.visualization import activation_map_figure, occlusion_figure, show

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
model = digits_cnn()
images, labels = digits_images(n=4)

# %% [markdown]
# Pick a conv5 channel that responds to these digits: the one whose mean activation after
# the ReLU is largest on the least responsive of the four (so it is active on each).

# %%
with torch.no_grad():
    conv5_relu = model.features[:12](images).mean(dim=(2, 3))  # conv5_relu = features.11
channel = int(conv5_relu.min(dim=0).values.argmax())
print("conv5 channel", channel, "(0-based), mean activation:", conv5_relu[:, channel].tolist())
assert (conv5_relu[:, channel] > 0).all()

# %% [markdown]
# ## Upsampled activation map
#
# The 8 × 8 map of the channel is interpolated to 32 × 32 (`bicubic` by default, like
# DNNBrain; also `nearest`, `bilinear`, `area`). `threshold=q` raises every value below the
# q-quantile to it (DNNBrain's `interp_threshold`), `binarize=True` turns it into a mask.

# %%
upsampler = UpsamplingActivationMapping(model, "conv5")
maps = upsampler.attribute(images, target=channel)  # (4, 32, 32)
top = upsampler.attribute(images, target=channel, threshold=0.9, binarize=True)
print("map", tuple(maps.shape), "- top 10 % pixels per image:", top.sum(dim=(1, 2)).tolist())
fig = activation_map_figure(maps[0], images[0], title=f"conv5 channel {channel}")
show(fig, "02_upsampled_map")

# %% [markdown]
# ## Occlusion
#
# Each entry of the result is `original − occluded` for one window position; the grid has
# `floor((H − h) / s) + 1` rows. Windows are evaluated many at a time and the forward pass
# stops at the layer. `baselines` is the occluder's value (0 = black for the digits model,
# which takes images in [0, 1]) or `"noise"`.

# %%
occluder = OccluderDiscrepancyMapping(model, "conv5")
window, stride = (8, 8), (4, 4) if FAST else (2, 2)
grid = occluder.attribute(
    images, target=channel, sliding_window_shapes=window, strides=stride, baselines=0.0
)
print("grid", tuple(grid.shape))
fig = occlusion_figure(grid[0], images[0], window, stride, title=f"conv5 channel {channel}")
show(fig, "02_occlusion_channel")

# %% [markdown]
# The same class explains the model's output: leave out the layer, and the target is a class.
# Red regions are where covering the digit costs its class most.

# %%
classes = model(images).argmax(dim=1)
class_grid = OccluderDiscrepancyMapping(model).attribute(
    images, target=classes, sliding_window_shapes=window, strides=stride
)
rows, cols = class_grid.shape[1:]
for k in range(images.shape[0]):
    r, c = divmod(int(class_grid[k].argmax()), cols)
    covered = images[
        k, :, r * stride[0] : r * stride[0] + window[0], c * stride[1] : c * stride[1] + window[1]
    ]
    print(
        f"digit {k}: covering rows {r * stride[0]}-{r * stride[0] + window[0] - 1}, columns "
        f"{c * stride[1]}-{c * stride[1] + window[1] - 1} costs class {int(classes[k])} most "
        f"({float(class_grid[k].max()):.1f})"
    )
    assert covered.mean() > images[k].mean()  # the finding: that window is on the strokes
fig = occlusion_figure(class_grid[1], images[1], window, stride, title=f"class {int(classes[1])}")
show(fig, "02_occlusion_class")

# %% [markdown]
# ## An ImageNet model
#
# DNNBrain's examples used AlexNet conv5 channel 122 (1-based: 0-based 121) with an 11 × 11
# occluder and stride 2, which gives a 107 × 107 grid at 224 × 224. This cell runs when
# AlexNet's ImageNet weights are already in the torch hub cache (nothing is downloaded).

# %%
import torchvision  # noqa: E402

weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
if cached.is_file():
    alexnet = torchvision.models.alexnet(weights=weights).eval()
    photo = weights.transforms()(torch.rand(3, 256, 256)).unsqueeze(0)  # use your own image
    up = UpsamplingActivationMapping(alexnet, "conv5").attribute(photo, target=121)
    occ = OccluderDiscrepancyMapping(alexnet, "conv5").attribute(
        photo, target=121, sliding_window_shapes=(11, 11), strides=(8, 8) if FAST else (2, 2)
    )
    print("AlexNet conv5 channel 121:", tuple(up.shape), tuple(occ.shape))
else:
    print(f"skipped: {cached} is not on this machine")
