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

# %%
import os

from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.receptive_field import TheoreticalReceptiveField
from dnnbrain_captum.visualization import receptive_field_figure

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
model = digits_cnn()
images, labels = digits_images(n=8)

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
fig  # noqa: B018 - a notebook shows the figure

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
