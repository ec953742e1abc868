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
# # Receptive fields: theoretical and empirical
#
# A unit's **theoretical** receptive field is the set of input pixels that can influence it
# at all; it follows from the kernels, strides, padding and dilation on the way.
# `TheoreticalReceptiveField` reads them from the model's actual computation graph, so it
# works for any CNN (DNNBrain's version knew only AlexNet and VGG). Conventions (Araujo et
# al. 2019): unit (i, j) of a layer with size r, jump j and effective padding P sees the
# rows `[i·j − P, i·j − P + r)`.
#
# The **empirical** receptive field is where a channel actually responds on real images,
# measured with an upsampled activation map or an occlusion map (Zhou et al. 2015).
#
# **Finding checked below:** a conv3 channel's empirical receptive field on real digits
# covers less area than its theoretical one (never more in either direction).

# %%
import os
from pathlib import Path

import torch

from dnnbrain_captum import OccluderDiscrepancyMapping, UpsamplingActivationMapping
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.receptive_field import EmpiricalReceptiveField, TheoreticalReceptiveField
from dnnbrain_captum.visualization import empirical_rf_figure, receptive_field_figure, show

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
model = digits_cnn()
images, labels = digits_images(n=16 if FAST else 128)

# %% [markdown]
# ## The table of every layer
#
# Keys are module paths and DNNBrain aliases; `str(table)` prints it.

# %%
rf = TheoreticalReceptiveField(model, input_size=(3, 32, 32))
table = rf.compute()
print(table)
conv5 = table["conv5"]
print("conv5:", conv5.size, "pixels wide, jump", conv5.stride, "padding", conv5.padding)

# %% [markdown]
# ## One unit's field on the image
#
# `find_region(layer, (row, col))` returns half-open pixel intervals clipped to the image
# (`[(h0, h1), (w0, w1)]`), 0-based like everything else.

# %%
regions = [rf.find_region(name, (4, 4)) for name in ("conv3", "conv5")]
print("conv3 (4, 4):", regions[0], " conv5 (4, 4):", regions[1])
fig = receptive_field_figure(images[0], regions, ["conv3 (4, 4)", "conv5 (4, 4)"])
show(fig, "03_theoretical_regions")

# %% [markdown]
# ## Any architecture
#
# Branches and merges (ResNet additions, Inception concatenations), dilation and `ceil_mode`
# are followed; the analysis runs on shape-only tensors, so it costs no computation.

# %%
import torchvision  # noqa: E402

resnet = torchvision.models.resnet18()
resnet_table = TheoreticalReceptiveField(resnet, input_size=(3, 224, 224)).compute()
for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
    print(f"resnet18 {name:7s} size {resnet_table[name].size}, jump {resnet_table[name].stride}")

alexnet_table = TheoreticalReceptiveField(
    torchvision.models.alexnet(), input_size=(3, 224, 224)
).compute()
print("AlexNet conv5:", alexnet_table["conv5"].size, "(DNNBrain: 163)")

# %% [markdown]
# ## The empirical receptive field
#
# `EmpiricalReceptiveField(engine)` takes an `UpsamplingActivationMapping` or an
# `OccluderDiscrepancyMapping` built on the model and layer. For every image it finds the
# channel's best unit, cuts the engine's map out over that unit's theoretical field and
# averages the cut-outs; `size` is the half-maximum extent of the average, in pixels. It is
# usually much smaller than the theoretical field (Zhou et al. 2015; Luo et al. 2016).

# %%
with torch.no_grad():
    conv3_out = model.features[:7](images)  # conv3 = features.6
channel = int(conv3_out.mean(dim=(0, 2, 3)).argmax())
measure = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv3"))
result = measure.attribute(images, target=channel)
print(
    f"conv3 channel {channel}: empirical size {result.size.tolist()} px, "
    f"theoretical {measure.theoretical((3, 32, 32)).size}"
)
theoretical = measure.theoretical((3, 32, 32)).size  # (height, width)
assert all(float(v) <= t for v, t in zip(result.size, theoretical, strict=True))
assert float(result.size[0] * result.size[1]) < theoretical[0] * theoretical[1]  # the finding
fig = empirical_rf_figure(
    result.map,
    result.size.tolist(),
    title=f"conv3 channel {channel}: mean map over the best unit's field "
    f"({theoretical[0]} x {theoretical[1]} px)",
)
show(fig, "03_empirical_rf")

# %% [markdown]
# The occlusion engine measures the same thing by covering the image: its grid is put into
# pixel coordinates for you, whatever the window and stride. `alignment="map"` picks each
# image's unit as DNNBrain did (the unit whose field holds the most map mass).

# %%
occlusion = EmpiricalReceptiveField(OccluderDiscrepancyMapping(model, "conv3"))
by_occlusion = occlusion.attribute(
    images[:8], target=channel, sliding_window_shapes=(6, 6), strides=(4, 4) if FAST else (2, 2)
)
print("occlusion engine size:", by_occlusion.size.tolist(), "px")

# %% [markdown]
# ## An ImageNet model
#
# DNNBrain's example: AlexNet conv5 channel 122 (1-based, so 121), upsampling engine with
# threshold 0.5, giving a 163 × 163 map. This cell runs when AlexNet's ImageNet weights are
# already in the torch hub cache; use your own photos instead of the random images.

# %%
weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
if cached.is_file():
    alexnet = torchvision.models.alexnet(weights=weights).eval()
    photos = torch.stack([weights.transforms()(torch.rand(3, 256, 256)) for _ in range(4)])
    erf = EmpiricalReceptiveField(UpsamplingActivationMapping(alexnet, "conv5"))
    alex = erf.attribute(photos, target=121, threshold=0.5, alignment="map")
    print("AlexNet conv5 channel 121:", tuple(alex.map.shape), alex.size.tolist())
else:
    print(f"skipped: {cached} is not on this machine")
