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
# # Synthesised images: what maximises a channel or a class?
#
# Activation maximisation (Erhan et al. 2009; Olah et al. 2017) optimises an image so that
# one channel, one unit or one class score becomes as large as possible. DNNBrain's
# `SynthesisImage` did this one channel at a time with plain pixels; here one call
# optimises one image **per example**, so a whole layer's channels come out of one batch, and
# the modern recipe (Fourier parametrisation, colour decorrelation, random jitter, scale and
# rotation) is the default. DNNBrain's own settings are a preset away.
#
# **Finding checked below:** after a few dozen steps, each class's synthesised image scores
# higher on that class than the best of the 359 held-out digits of the class.

# %%
import os
from pathlib import Path

import torch

from dnnbrain_captum import SynthesisImage, random_images
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.visualization import show, synthesis_grid

FAST = os.environ.get("DNNBRAIN_CAPTUM_FAST") == "1"  # the test suite sets this
model = digits_cnn()
steps = 16 if FAST else 64

# %% [markdown]
# ## One image per class
#
# Without a layer the target is Captum's: a class index per example. `random_images` gives
# the starting images (mid grey plus a little noise); `return_history=True` also returns the
# target's value at every step.

# %%
classes = list(range(10))
result = SynthesisImage(model).attribute(
    random_images(10, 32), target=classes, n_iter=steps, return_history=True
)
print("logit at the start:", [round(v, 1) for v in result.activation[:, 0].tolist()])
print("logit at the end:  ", [round(v, 1) for v in result.activation[:, -1].tolist()])
held_out, digit_labels = digits_images()  # every held-out digit
with torch.no_grad():
    logits = model(held_out)
best_real = torch.stack([logits[digit_labels == c, c].max() for c in classes])
print("best held-out digit:", [round(v, 1) for v in best_real.tolist()])
assert (result.activation[:, -1] > best_real).all()  # the finding: synthesis beats the data
fig = synthesis_grid(
    result.images.clamp(0, 1),
    [f"class {c}: {float(result.activation[c, -1]):.0f}" for c in classes],
    ncols=5,
    title="synthesised image per class (logit reached)",
)
show(fig, "04_classes")

# %% [markdown]
# ## A layer's channels, in one batch
#
# With a layer, a target is a 0-based channel (its spatial mean is maximised; `reduction=
# "max"` maximises its largest unit) or a unit `(c, i, j)`. A list gives one target per
# image.

#
# A channel behind a ReLU that is silent on the starting image has no gradient of its own;
# `SynthesisImage` then climbs a surrogate (its units' pre-activations, closest to firing
# first) until the channel fires, and reports the true value. A few of the digits model's
# deepest channels are silent on every digit and have not been made to fire by any search
# yet. Here we take the eight channels most active on the start.

# %%
start = random_images(8, 32)
with torch.no_grad():
    at_start = model.features[:12](start).mean(dim=(2, 3))[0]  # conv5_relu, first image
channels = at_start.argsort(descending=True)[:8].tolist()
assert (at_start[channels] > 0).all()
found = SynthesisImage(model, "conv5_relu").attribute(
    start, target=channels, n_iter=steps, return_history=True
)
print(
    "conv5 channel mean, start -> end:",
    [f"{a:.1f}->{b:.1f}" for a, b in found.activation[:, [0, -1]].tolist()],
)
assert (found.activation[:, -1] > found.activation[:, 0]).all()
fig = synthesis_grid(found.images.clamp(0, 1), [f"conv5 {c}" for c in channels])
show(fig, "04_conv5_channels")

# %% [markdown]
# ## DNNBrain's settings
#
# `preset="dnnbrain"` reproduces the DNNBrain paper's figures (plain pixels, no transforms,
# total-variation λ = 0.1, Adam lr 1.0, 500 steps); `preset="dnnbrain-guide"` the user
# guide's example (TV λ 0.01, Gaussian-blur preconditioning σ 0.3, Fourier gradient smoothing
# 0.3, lr 0.1, 150 steps). Every option can also be set on its own: `regularizers=
# {"tv": 0.1, "l2": 0.01}`, `blur_sigma`, `fourier_factor`, `param="pixel"`, `lr`, `n_iter`.
# DNNBrain's bugs are fixed: the regulariser weight no longer crashes when left out, the blur
# keeps Adam's state and blurs each colour separately, the Fourier smoothing runs on current
# PyTorch, and snapshots come back in memory (`snapshot_every=k`) instead of files.

# %%
guide = SynthesisImage(model, "conv5_relu").attribute(
    random_images(2, 32, kind="uniform"),
    target=[0, 1],
    preset="dnnbrain-guide",
    n_iter=steps,
    snapshot_every=max(1, steps // 4),
)
print("snapshots:", tuple(guide.snapshots.shape), "at steps", guide.snapshot_steps)
fig = synthesis_grid(guide.snapshots[0].clamp(0, 1), [f"step {s}" for s in guide.snapshot_steps])
show(fig, "04_dnnbrain_guide_snapshots")

# %% [markdown]
# ## An ImageNet model
#
# For a model that normalises its inputs, pass `mean` and `std` so the image stays in the
# valid pixel range. DNNBrain's paper synthesised AlexNet fc3 units 10, 85 and 131 (1-based;
# ostrich, peacock, flamingo), that is classes 9, 84 and 130. This cell runs when AlexNet's
# ImageNet weights are already in the torch hub cache.

# %%
import torchvision  # noqa: E402

from dnnbrain_captum.io import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
if cached.is_file():
    alexnet = torchvision.models.alexnet(weights=weights).eval()
    start = random_images(3, 224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    birds = SynthesisImage(alexnet).attribute(
        start, target=[9, 84, 130], mean=IMAGENET_MEAN, std=IMAGENET_STD, n_iter=steps
    )
    print("AlexNet ostrich, peacock, flamingo:", tuple(birds.shape))
else:
    print(f"skipped: {cached} is not on this machine")
