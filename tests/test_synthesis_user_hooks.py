"""SynthesisImage with a caller's forward hook that changes a ReLU's output (a lesion).

Found by review (2026-12-01), each test seen failing first: the extra searches kept images on
which the true target did not fire, the redirected ReLU discarded the hook's output, and the
history of a hooked ReLU target reported ``relu`` of its input.
"""

from __future__ import annotations

import torch
from torch import nn

from dnnbrain_captum.optim.synthesis import SynthesisImage


def _relu_net(bias: list[float]) -> nn.Sequential:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.3)
        conv.bias.copy_(torch.tensor(bias))
    return nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


def test_silent_search_replaces_an_image_only_if_the_true_target_fires() -> None:
    # The caller ablates channel 0 of the ReLU with a forward hook: its true value is 0 on
    # every image. The extra searches read the ReLU's input (pre.clamp(0) > 0: "fired") and
    # swapped in their image although the target did not fire (docs: replaced only if fired).
    model = _relu_net([-0.25, -0.25, -0.3, -5.0])

    def ablate(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, 0] = 0
        return output

    model[1].register_forward_hook(ablate)
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.2
    synth = SynthesisImage(model, model[1])
    plain = synth.attribute(x, target=0, n_iter=1, silent_steps=0)
    searched = synth.attribute(x, target=0, n_iter=1, silent_steps=40, return_history=True)
    assert torch.equal(searched.activation[:, -1], torch.zeros(2))
    assert torch.equal(searched.images, plain)


def test_redirected_relu_keeps_the_forward_values_of_a_lesioned_model() -> None:
    # A user's forward hook lesions every unit of the ReLU (output * 0). The redirected ReLU
    # returned relu(input), discarding the hook's output: step 0 of the history (the start
    # image, no transforms, plain pixels) reported 0.1898 for a true activation of 0.1962
    # (the next layer's bias alone).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    model[1].register_forward_hook(lambda module, args, output: output * 0)
    x = torch.rand(1, 3, 6, 6)
    result = SynthesisImage(model, model[2]).attribute(
        x, target=0, n_iter=2, return_history=True, transforms="none", param="pixel"
    )
    bias = model[2].bias[0].detach()
    assert torch.allclose(result.activation[0], bias.expand(3), atol=1e-6)


def test_history_of_a_relu_target_whose_output_a_user_hook_changes() -> None:
    # Channel 0 of the target ReLU is ablated by the caller's hook: its true value is 0 on
    # every image. The surrogate for silent ReLU targets read the ReLU's input, so the
    # history's steps reported relu(pre) (0.0540, 0.0656, 0.0760); with a hook on the ReLU
    # the layer's output is read as is.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()

    def ablate(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, 0] = 0
        return output

    model[1].register_forward_hook(ablate)
    x = torch.rand(1, 3, 6, 6)
    result = SynthesisImage(model, model[1]).attribute(x, target=0, n_iter=3, return_history=True)
    assert torch.equal(result.activation, torch.zeros(1, 4))
