"""Run every class on CUDA tensors and compare with the CPU result (needs a GPU).

Run: ``python benchmarks/cuda_check.py``. Prints one line per class: the output device, the
largest difference from the CPU run, and PASS/FAIL. Not part of the test suite (CI has no GPU).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import NoiseTunnel
from torchvision.models import resnet18

import dnnbrain_captum as dc
from dnnbrain_captum.models import digits_cnn, digits_images


def tensors(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in tensors(item)]
    return []


def compare(
    name: str,
    run: Callable[[torch.nn.Module, torch.Tensor], Any],
    x: torch.Tensor,
    model_factory: Callable[[], torch.nn.Module],
    atol: float = 1e-3,
) -> bool:
    device = torch.device("cuda")
    torch.manual_seed(0)
    cpu = tensors(run(model_factory().double(), x.double()))
    torch.manual_seed(0)
    model = model_factory().double().to(device)
    gpu = tensors(run(model, x.double().to(device)))
    ok = len(cpu) == len(gpu) and all(g.device.type == "cuda" for g in gpu)
    worst = 0.0
    for a, b in zip(cpu, gpu, strict=False):
        if a.is_floating_point():
            worst = max(worst, float((a - b.cpu()).abs().max()) if a.numel() else 0.0)
        else:
            ok = ok and torch.equal(a, b.cpu())
    ok = ok and worst <= atol
    devices = sorted({str(g.device) for g in gpu})
    print(f"{'PASS' if ok else 'FAIL'} {name}: devices {devices}, max |cpu - cuda| {worst:.2e}")
    return ok


def main() -> int:
    warnings.simplefilter("ignore")
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    x, labels = digits_images(n=3)
    t = labels.tolist()
    cases: list[tuple[str, Callable[[Any, torch.Tensor], Any]]] = [
        (
            "VanillaSaliencyImage",
            lambda m, x: dc.VanillaSaliencyImage(m, "conv3").attribute(x, target=t),
        ),
        ("GuidedSaliencyImage", lambda m, x: dc.GuidedSaliencyImage(m).attribute(x, target=t)),
        (
            "NoiseTunnel(Guided)",
            lambda m, x: NoiseTunnel(dc.GuidedSaliencyImage(m, "conv4")).attribute(
                x, nt_samples=4, stdevs=0.0, target=t
            ),
        ),
        (
            "UpsamplingActivationMapping",
            lambda m, x: dc.UpsamplingActivationMapping(m, "conv5").attribute(
                x, target=t, threshold=0.5
            ),
        ),
        (
            "Occlusion full",
            lambda m, x: dc.OccluderDiscrepancyMapping(m, "conv3").attribute(
                x, target=t, sliding_window_shapes=5, strides=3, method="full"
            ),
        ),
        (
            "Occlusion incremental",
            lambda m, x: dc.OccluderDiscrepancyMapping(m, "conv3").attribute(
                x, target=t, sliding_window_shapes=5, strides=3, method="incremental"
            ),
        ),
        (
            "Occlusion noise",
            lambda m, x: dc.OccluderDiscrepancyMapping(m).attribute(
                x, target=t, sliding_window_shapes=8, strides=8, baselines="noise"
            ),
        ),
        ("MaskedImage", lambda m, x: dc.MaskedImage(m).attribute(x, target=t)),
        (
            "MinimalParcelImage",
            lambda m, x: dc.MinimalParcelImage(m).attribute(
                x, target=t, segmentation="slic", segmentation_kwargs={"n_segments": 20}
            ),
        ),
        (
            "MinimalComponentImage",
            lambda m, x: dc.MinimalComponentImage(m).attribute(x, target=t, patch_size=4),
        ),
        (
            "EmpiricalReceptiveField",
            lambda m, x: dc.EmpiricalReceptiveField(
                dc.UpsamplingActivationMapping(m, "conv3")
            ).attribute(x, target=5),
        ),
    ]
    results = [compare(name, run, x, digits_cnn) for name, run in cases]
    # SynthesisImage starts from noise: from the digits (flat backgrounds, exact ties in 41 %
    # of the first max-pool windows) the subgradient at a tie is picked by rounding, and Adam's
    # first step, of size lr whatever the gradient's magnitude, amplifies it: on the CPU alone a
    # 1e-15 change of a digit start moves the result by 0.29, and fused, foreach and loop Adam
    # differ by 4e-16. From noise a 1e-12 change moves it by 1e-10 (5 and 32 steps).
    noise = dc.random_images(3, 32, kind="uniform", seed=0)
    results.append(
        compare(
            "SynthesisImage (noise start)",
            lambda m, x: dc.SynthesisImage(m, "conv5").attribute(x, target=t, n_iter=32),
            noise,
            digits_cnn,
            atol=1e-6,
        )
    )
    y = torch.rand(2, 3, 64, 64)
    results.append(
        compare(
            "Occlusion incremental resnet18 layer2",
            lambda m, x: dc.OccluderDiscrepancyMapping(m, "layer2").attribute(
                x, target=3, sliding_window_shapes=9, strides=5
            ),
            y,
            lambda: resnet18().eval(),
        )
    )
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
