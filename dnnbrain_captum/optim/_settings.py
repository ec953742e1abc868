"""Presets of :class:`~dnnbrain_captum.optim.SynthesisImage` and its device-independent helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["LOW_PRECISION", "PRESETS", "adam_kernel", "refusing_low_precision"]

#: Named settings; every entry can be overridden by passing the argument explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # Our default: Lucid-style parametrisation and robustness, then steps on the returned image.
    "default": {
        "param": "fft",
        "decorrelate": True,
        "transforms": "standard",
        "lr": 0.3,
        "n_iter": 256,
        "regularizers": {},
        "blur_sigma": 0.0,
        "fourier_factor": 0.0,
        "redirect_relu": True,
        "polish": 0.5,
        "silent_multiple": 3,
    },
    # Lucent's render_vis defaults: fft + decorrelation, standard transforms, Adam lr 0.05.
    "lucent": {
        "param": "fft",
        "decorrelate": True,
        "transforms": "standard",
        "lr": 0.05,
        "n_iter": 512,
        "regularizers": {},
        "blur_sigma": 0.0,
        "fourier_factor": 0.0,
        "redirect_relu": True,
        "polish": 0.0,
        "silent_multiple": 0,
    },
    # The DNNBrain paper's figures (visualize_DNN tutorial): pixels, TV λ = 0.1, Adam lr 1.0.
    "dnnbrain": {
        "param": "pixel",
        "decorrelate": False,
        "transforms": "none",
        "lr": 1.0,
        "n_iter": 500,
        "regularizers": {"tv": 0.1},
        "blur_sigma": 0.0,
        "fourier_factor": 0.0,
        "redirect_relu": False,
        "polish": 0.0,
        "silent_multiple": 0,
    },
    # DNNBrain's user-guide example: TV λ 0.01, blur σ 0.3, Fourier factor 0.3, lr 0.1.
    "dnnbrain-guide": {
        "param": "pixel",
        "decorrelate": False,
        "transforms": "none",
        "lr": 0.1,
        "n_iter": 150,
        "regularizers": {"tv": 0.01},
        "blur_sigma": 0.3,
        "fourier_factor": 0.3,
        "redirect_relu": False,
        "polish": 0.0,
        "silent_multiple": 0,
    },
}


LOW_PRECISION = (torch.float16, torch.bfloat16)


def refusing_low_precision(images: Tensor, run: Callable[[], Tensor]) -> Tensor:
    """``run()``; a model without kernels for a half-precision dtype is refused (TypeError)."""
    try:
        return run()
    except (RuntimeError, NotImplementedError) as error:
        if images.dtype not in LOW_PRECISION:
            raise
        raise TypeError(
            f"the model cannot run in {images.dtype} on {images.device.type} ({error}); "
            "use a float32 model and float32 inputs"
        ) from error


def adam_kernel(tensor: Tensor) -> dict[str, bool]:
    """Adam's fused kernel wherever PyTorch has one (CPU, CUDA, ...: every floating dtype).

    The same implementation on every device, so a CPU and an accelerator run apply the same
    update formula (the unfused default differs by device: foreach on CUDA, a loop on the CPU).
    """
    if tensor.device.type in ("cpu", "mps", "xpu") or tensor.is_cuda:
        return {"fused": True}
    return {}
