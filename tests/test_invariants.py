"""The contract every attribution class keeps (DESIGN.md §3), parametrised over a registry.

Each :class:`Case` builds a model, a small float batch and a function ``run(model, x)`` that
calls the class. For every case we check: no hook is left after a successful call or after an
exception inside the forward pass; the model's mode, parameters, ``requires_grad`` and
``.grad`` are untouched; the input is not modified; the batched result equals the one-by-one
results; two calls give the same result; the output keeps the input's dtype and device; a
model in training mode (with batch norm) keeps its buffers, parameters and modes exactly.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from captum.attr import NoiseTunnel
from torch import Tensor, nn

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    GuidedSaliencyImage,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    TheoreticalReceptiveField,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum.optim import SynthesisImage
from tests.helpers.models import TinyConvNet


@dataclass
class Case:
    """One registry entry.

    ``make_model()`` returns a model (float32); ``make_inputs(dtype)`` a batch of 2 or more
    examples; ``run(model, x, index)`` the attribution (a tensor, or a tuple/namedtuple of
    tensors), where ``index`` lists which examples of the full batch ``x`` holds (use
    :func:`pick` for per-example targets).
    ``batch_size_invariant=False`` only where one-by-one differs by design (say why).
    """

    id: str
    make_model: Callable[[], nn.Module]
    run: Callable[[nn.Module, Tensor, list[int]], Any]
    make_inputs: Callable[[torch.dtype], Tensor] = field(
        default=lambda dtype: torch.rand(
            2, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=dtype
        )
    )
    batch_size_invariant: bool = True
    atol: float = 1e-5
    # True where batch statistics (a training-mode batch norm) make the method impossible and
    # it refuses with a ValueError naming them.
    refuses_batch_statistics: bool = False
    # A known layout bug owned by another issue: the reason, and the test is xfail(strict=True).
    layout_xfail: str | None = None


def _tensors(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _tensors(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in _tensors(item)]
    return []


def _hook_count(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(module._backward_pre_hooks)
    return total


def pick(values: list[Any], index: list[int]) -> list[Any]:
    """The per-example targets of the examples in ``index``."""
    return [values[k] for k in index]


def _tiny() -> nn.Module:
    return TinyConvNet().eval()


CASES: list[Case] = []


# Registry entries: one block per module, appended by whoever writes the class.
# --- foundation (saliency, upsampling, occlusion) ---
CASES += [
    Case("vanilla-output", _tiny, lambda m, x, i: VanillaSaliencyImage(m).attribute(x, target=1)),
    Case(
        "vanilla-channel",
        _tiny,
        lambda m, x, i: VanillaSaliencyImage(m, "conv2").attribute(x, target=2),
    ),
    Case(
        "vanilla-unit-to-layer",
        _tiny,
        lambda m, x, i: VanillaSaliencyImage(m, "relu2").attribute(
            x, target=(1, 2, 3), to_layer="relu1", attribute_to_layer_input=True
        ),
    ),
    Case(
        "guided-output",
        _tiny,
        lambda m, x, i: GuidedSaliencyImage(m).attribute(x, target=pick([0, 3], i)),
    ),
    Case(
        "guided-channel",
        _tiny,
        lambda m, x, i: GuidedSaliencyImage(m, m.relu2).attribute(x, target=1, reduction="max"),
    ),
    Case(
        "smoothgrad",
        _tiny,
        lambda m, x, i: NoiseTunnel(GuidedSaliencyImage(m, "conv2")).attribute(
            x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=pick([1, 2], i)
        ),
    ),
    Case(
        "upsampling",
        _tiny,
        lambda m, x, i: UpsamplingActivationMapping(m, "conv2").attribute(
            x, target=3, threshold=0.5
        ),
    ),
    Case(
        "occlusion-channel",
        _tiny,
        lambda m, x, i: OccluderDiscrepancyMapping(m, "conv2").attribute(
            x, target=1, sliding_window_shapes=(4, 4), strides=(3, 3), perturbations_per_eval=5
        ),
    ),
    Case(
        "occlusion-output-noise",
        _tiny,
        lambda m, x, i: OccluderDiscrepancyMapping(m).attribute(
            x, target=pick([0, 4], i), sliding_window_shapes=5, strides=4, baselines="noise"
        ),
    ),
]
# --- synthesis (activation maximisation) ---
CASES += [
    Case(
        "synthesis-channels-default",
        _tiny,
        lambda m, x, i: SynthesisImage(m, "conv2").attribute(
            x, target=pick([0, 3, 1, 2], i), n_iter=4, seed=3, return_history=True
        ),
    ),
    Case(
        "synthesis-output-dnnbrain-guide",
        _tiny,
        lambda m, x, i: SynthesisImage(m).attribute(
            x, target=pick([1, 4, 0, 2], i), preset="dnnbrain-guide", n_iter=3, snapshot_every=2
        ),
        atol=1e-4,
    ),
    Case(
        "synthesis-unit-pixel-l1",
        _tiny,
        lambda m, x, i: SynthesisImage(m, m.relu2).attribute(
            x,
            target=(1, 2, 3),
            param="pixel",
            decorrelate=False,
            regularizers={"l1": 0.01, "l2": 0.1},
            n_iter=3,
            lr=0.01,
        ),
    ),
]
# --- receptive fields ---


def _rf_theoretical(model: nn.Module, x: Tensor, index: list[int]) -> Tensor:
    # The table depends on the input size only; returned as a tensor so the checks apply.
    rf = TheoreticalReceptiveField(model, tuple(x.shape[1:]))
    entry = rf.compute()["conv2"]
    region = rf.find_region("conv2", (2, 3))
    values = [*entry.size, *entry.stride, *entry.padding, *region[0], *region[1]]
    return torch.tensor(values, device=x.device)


CASES += [
    # Not batch-size invariant by design: the table does not depend on the images, and the
    # empirical field is a mean over the whole batch.
    Case("rf-theoretical", _tiny, _rf_theoretical, batch_size_invariant=False),
    Case(
        "rf-empirical-upsampling",
        _tiny,
        lambda m, x, i: EmpiricalReceptiveField(UpsamplingActivationMapping(m, "conv2")).attribute(
            x, target=1
        ),
        batch_size_invariant=False,
    ),
    Case(
        "rf-empirical-occlusion",
        _tiny,
        lambda m, x, i: EmpiricalReceptiveField(OccluderDiscrepancyMapping(m, m.relu2)).attribute(
            x, target=2, sliding_window_shapes=3, strides=2, perturbations_per_eval=8
        ),
        batch_size_invariant=False,
    ),
]
# --- incremental occlusion (issue 7) ---
CASES += [
    Case(
        "occlusion-incremental",
        _tiny,
        lambda m, x, i: OccluderDiscrepancyMapping(m, "relu2").attribute(
            x,
            target=pick([1, 3], i),
            sliding_window_shapes=(4, 3),
            strides=(2, 3),
            baselines="noise",
            reduction="max",
            perturbations_per_eval=7,
            method="incremental",
        ),
        refuses_batch_statistics=True,
    ),
]
# --- masked and minimal images (issue 5) ---
_GRID = (torch.arange(12) // 4)[:, None] * 3 + (torch.arange(12) // 4)[None, :]
CASES += [
    Case(
        "masked-channel",
        _tiny,
        lambda m, x, i: MaskedImage(m, "relu2").attribute(
            x, target=2, return_masks=True, perturbations_per_eval=3
        ),
    ),
    Case(
        "minimal-parcel-removal",
        _tiny,
        lambda m, x, i: MinimalParcelImage(m, "relu2").attribute(
            x, target=1, feature_mask=_GRID, search_criterion="removal", activation_criterion="L2"
        ),
    ),
    Case(
        "minimal-parcel-slic-output",
        _tiny,
        lambda m, x, i: MinimalParcelImage(m).attribute(
            x,
            target=pick([0, 4], i),
            segmentation="slic",
            segmentation_kwargs={"n_segments": 6},
            search_criterion="fitting_curve",
            perturbations_per_eval=2,
        ),
    ),
    Case(
        "minimal-component",
        _tiny,
        lambda m, x, i: MinimalComponentImage(m, "relu2").attribute(
            x, target=1, patch_size=4, search_criterion="threshold"
        ),
    ),
]
# --- end of registry ---


def _ids() -> list[str]:
    return [case.id for case in CASES]


@pytest.fixture(params=CASES, ids=_ids())
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def test_registry_is_not_empty() -> None:
    assert len(CASES) >= 1


def test_model_and_inputs_untouched_no_hooks_left(case: Case) -> None:
    model = case.make_model()
    for p in model.parameters():
        p.grad = None
    first = next(model.parameters())
    first.requires_grad_(False)
    training = model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hook_count(model)
    x = case.make_inputs(torch.float32)
    x_copy, version = x.clone(), x._version
    case.run(model, x, list(range(x.shape[0])))
    assert _hook_count(model) == hooks
    assert model.training == training
    assert not first.requires_grad
    assert all(p.requires_grad for p in model.parameters() if p is not first)
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    torch.testing.assert_close(x, x_copy, rtol=0, atol=0)
    assert x._version == version
    assert not x.requires_grad


def test_no_hooks_left_after_exception(case: Case) -> None:
    model = case.make_model()
    hooks = _hook_count(model)
    x = case.make_inputs(torch.float32)

    class Boom(RuntimeError):
        pass

    def explode(module: nn.Module, args: Any, output: Any) -> None:
        raise Boom("failure inside the forward pass")

    # Fail inside the first module that runs, after the class has registered its hooks.
    first_leaf = next(m for m in model.modules() if not list(m.children()))
    handle = first_leaf.register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            case.run(model, x, list(range(x.shape[0])))
    finally:
        handle.remove()
    assert _hook_count(model) == hooks


def test_batched_equals_one_by_one_and_deterministic(case: Case) -> None:
    model = case.make_model()
    x = case.make_inputs(torch.float32)
    torch.manual_seed(0)
    batched = _tensors(case.run(model, x, list(range(x.shape[0]))))
    torch.manual_seed(0)
    again = _tensors(case.run(model, x, list(range(x.shape[0]))))
    assert batched, "the case returned no tensors"
    for a, b in zip(batched, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if not case.batch_size_invariant:
        return
    singles = []
    for k in range(x.shape[0]):
        torch.manual_seed(0)
        singles.append(_tensors(case.run(model, x[k : k + 1], [k])))
    for index, whole in enumerate(batched):
        if whole.dim() == 0 or whole.shape[0] != x.shape[0]:
            continue
        stacked = torch.cat([single[index] for single in singles])
        torch.testing.assert_close(whole, stacked, rtol=1e-4, atol=case.atol)


def test_dtype_and_device_kept(case: Case) -> None:
    model = case.make_model().double()
    x = case.make_inputs(torch.float64)
    for out in _tensors(case.run(model, x, list(range(x.shape[0])))):
        if out.is_floating_point():
            assert out.dtype == torch.float64
        assert out.device == x.device


def _with_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with its first ``Conv2d`` followed by a batch norm with non-trivial statistics."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                norm = nn.BatchNorm2d(child.out_channels)
                with torch.no_grad():
                    norm.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
                    norm.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(1))
                    norm.num_batches_tracked.fill_(7)
                setattr(parent, name, nn.Sequential(child, norm))
                return model
    raise AssertionError("the case's model has no Conv2d to follow with a batch norm")


def test_training_mode_model_left_exactly_as_it_was(case: Case) -> None:
    model = _with_batch_norm(case.make_model()).train()
    reference = copy.deepcopy(model)
    objects = {name: id(t) for name, t in [*model.named_buffers(), *model.named_parameters()]}
    x = case.make_inputs(torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is in training mode", category=UserWarning)
        if case.refuses_batch_statistics:
            with pytest.raises(ValueError, match="batch statistics"):
                case.run(model, x, list(range(x.shape[0])))
        else:
            case.run(model, x, list(range(x.shape[0])))
    assert [m.training for m in model.modules()] == [m.training for m in reference.modules()]
    now = [*model.named_buffers(), *model.named_parameters()]
    assert {name: id(t) for name, t in now} == objects  # the same tensor objects
    for (name, value), (_, expected) in zip(
        now, [*reference.named_buffers(), *reference.named_parameters()], strict=True
    ):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
        assert value.requires_grad == expected.requires_grad and value.grad is None
    with torch.no_grad():  # the logits afterwards, in either mode
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


def _layouts(x: Tensor) -> list[Tensor]:
    """Copies of ``x`` with other strides: channels-last and a strided view of a wider buffer."""
    channels_last = x.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)[..., ::2]
    wide.copy_(x)
    return [channels_last, wide] if x.dim() == 4 else [wide]


def test_memory_layout_never_changes_the_result(case: Case, request: pytest.FixtureRequest) -> None:
    if case.layout_xfail:
        request.applymarker(pytest.mark.xfail(strict=True, reason=case.layout_xfail))
    model = case.make_model()
    x = case.make_inputs(torch.float32)
    index = list(range(x.shape[0]))
    torch.manual_seed(0)
    expected = _tensors(case.run(model, x, index))
    for other in _layouts(x):
        assert not other.is_contiguous()
        torch.testing.assert_close(other, x, rtol=0, atol=0)
        torch.manual_seed(0)
        got = _tensors(case.run(model, other, index))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=case.atol)
