"""SynthesisImage on the bundled digits model: it finds what drives channels and classes."""

from __future__ import annotations

import pytest
import torch

from dnnbrain_captum import SynthesisImage, digits_cnn, digits_images, random_images
from dnnbrain_captum._utils.targets import evaluate_target
from dnnbrain_captum.optim import PRESETS, SynthesisResult, l1_norm, l2_norm, total_variation


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return digits_cnn()


def _high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Share of spectral power (DC removed) above a quarter cycle per pixel, per example."""
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.rfft2(centred).abs() ** 2
    fy = torch.fft.fftfreq(images.shape[-2])[:, None]
    fx = torch.fft.rfftfreq(images.shape[-1])[None, :]
    high = (fy**2 + fx**2).sqrt() > 0.25
    return (power * high).sum(dim=(1, 2, 3)) / power.sum(dim=(1, 2, 3))


def test_every_conv5_channel_beats_the_held_out_digits(model: torch.nn.Module) -> None:
    images, _ = digits_images("test")
    channels = list(range(64))
    with torch.no_grad():
        data = model.features[:11](images).mean(dim=(2, 3))  # conv5 channel means (360, 64)
    best_image = data.max(0).values  # (64,) the best held-out digit per channel
    start = random_images(64, 32, seed=1)
    result = SynthesisImage(model, "conv5").attribute(
        start, target=channels, n_iter=24, return_history=True
    )
    assert isinstance(result, SynthesisResult)
    assert result.images.shape == (64, 3, 32, 32)
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
    # The last history entry is the returned image's own activation (no transforms).
    with torch.no_grad():
        final = evaluate_target(model, model.features[10], (result.images,), channels)
    torch.testing.assert_close(result.activation[:, -1], final)
    margin = final - best_image
    assert bool((margin > 0).all()), margin.min()
    # Measured: smallest margin 1.54, median 3.11 (channel-mean units; the best digits reach
    # -12.8 to 2.0 depending on the channel).
    assert float(margin.min()) > 0.5


def test_class_logits_give_images_of_that_class(model: torch.nn.Module) -> None:
    classes = list(range(10))
    images = SynthesisImage(model).attribute(
        random_images(10, 32, seed=2), target=classes, n_iter=16
    )
    with torch.no_grad():
        predicted = model(images).argmax(1)
    assert predicted.tolist() == classes


@pytest.mark.parametrize(
    ("param", "decorrelate", "lr"),
    [("pixel", False, 0.02), ("pixel", True, 0.05), ("fft", False, 0.1), ("fft", True, 0.1)],
)
def test_objective_rises_for_each_parametrisation(
    model: torch.nn.Module, param: str, decorrelate: bool, lr: float
) -> None:
    result = SynthesisImage(model, "conv3").attribute(
        random_images(3, 16, seed=3),
        target=[0, 5, 11],
        n_iter=20,
        lr=lr,
        param=param,
        decorrelate=decorrelate,
        transforms="none",
        return_history=True,
    )
    history = result.activation[:, :-1]
    steps = history.diff(dim=1)
    assert bool((history[:, -1] > history[:, 0] + 0.4).all())
    # Monotone up to noise: nearly every step improves, no step loses much.
    assert float((steps > 0).float().mean()) >= 0.9
    assert float(steps.min()) > -0.05 * float(history.abs().max())


@pytest.mark.parametrize(
    ("name", "weight", "measure"),
    [("l1", 0.01, l1_norm), ("l2", 0.3, l2_norm), ("tv", 0.02, total_variation)],
)
def test_each_regulariser_lowers_its_own_measure(
    model: torch.nn.Module, name: str, weight: float, measure: object
) -> None:
    start = random_images(3, 16, kind="uniform", seed=4)
    common = dict(
        target=[1, 2, 3], n_iter=20, lr=0.05, param="pixel", decorrelate=False, transforms="none"
    )
    synth = SynthesisImage(model, "conv3")
    plain = synth.attribute(start, **common)
    regular = synth.attribute(start, regularizers={name.upper(): weight}, **common)
    assert bool((measure(regular) < 0.9 * measure(plain)).all())  # type: ignore[operator]


def test_blur_preconditioning_lowers_high_frequency_energy(model: torch.nn.Module) -> None:
    start = random_images(3, 16, kind="uniform", seed=5)
    common = dict(
        target=[1, 2, 3], n_iter=12, lr=0.05, param="pixel", decorrelate=False, transforms="none"
    )
    synth = SynthesisImage(model, "conv3")
    plain = synth.attribute(start, **common)
    blurred = synth.attribute(start, blur_sigma=1.0, **common)
    assert bool((_high_frequency_energy(blurred) < 0.5 * _high_frequency_energy(plain)).all())


def test_fourier_smoothing_lowers_high_frequencies_of_the_result(model: torch.nn.Module) -> None:
    start = random_images(2, 16, seed=6)
    common = dict(
        target=[4, 9], n_iter=12, lr=0.05, param="pixel", decorrelate=False, transforms="none"
    )
    synth = SynthesisImage(model, "conv3")
    plain = synth.attribute(start, **common)
    smooth = synth.attribute(start, fourier_factor=0.5, **common)
    assert bool((_high_frequency_energy(smooth) < _high_frequency_energy(plain)).all())


def test_snapshots_and_history(model: torch.nn.Module) -> None:
    start = random_images(2, 16, seed=7)
    result = SynthesisImage(model, "conv4").attribute(
        start, target=[(0, 1, 1), (3, 2, 2)], n_iter=6, snapshot_every=3, lr=0.05
    )
    assert isinstance(result, SynthesisResult)
    assert result.snapshot_steps == (0, 3, 6)
    assert result.snapshots is not None and result.snapshots.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(result.snapshots[:, 0], start, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.snapshots[:, -1], result.images, rtol=0, atol=0)
    assert result.activation.shape == result.penalty.shape == (2, 7)
    assert bool((result.penalty == 0).all())
    plain = SynthesisImage(model, "conv4").attribute(
        start, target=[(0, 1, 1), (3, 2, 2)], n_iter=6, lr=0.05
    )
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, result.images, rtol=0, atol=0)


def test_max_reduction_and_callable_target(model: torch.nn.Module) -> None:
    start = random_images(2, 16, seed=8)
    common = dict(n_iter=8, lr=0.05, transforms="none", return_history=True)
    synth = SynthesisImage(model, model.features[8])
    by_max = synth.attribute(start, target=[2, 7], reduction="max", **common)
    by_callable = synth.attribute(
        start,
        target=lambda out: torch.stack([out[0, 2].amax(), out[1, 7].amax()]),
        **common,
    )
    torch.testing.assert_close(by_max.images, by_callable.images)
    assert bool((by_max.activation[:, -1] > by_max.activation[:, 0]).all())


@pytest.mark.parametrize("preset", ["default", "dnnbrain-guide"])
def test_batched_synthesis_equals_single_runs(preset: str) -> None:
    model = digits_cnn().double()
    targets = [3, 17, 40]
    start = random_images(3, 32, seed=9, dtype=torch.float64)
    synth = SynthesisImage(model, "conv5")
    batched = synth.attribute(start, target=targets, n_iter=10, preset=preset, seed=5)
    singles = torch.cat(
        [
            synth.attribute(start[k : k + 1], target=[targets[k]], n_iter=10, preset=preset, seed=5)
            for k in range(3)
        ]
    )
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-12)
    other_seed = synth.attribute(start, target=targets, n_iter=10, preset=preset, seed=6)
    if preset == "default":  # random transforms: another seed gives other images
        assert not torch.allclose(batched, other_seed)


def test_random_images_example_k_depends_on_seed_and_k_only() -> None:
    both = random_images(3, 8, seed=11)
    torch.testing.assert_close(random_images(2, 8, seed=11), both[:2], rtol=0, atol=0)
    normalised = random_images(
        2, 8, kind="uniform", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    assert float(normalised.min()) >= -0.485 / 0.229 - 1e-6
    assert float(normalised.max()) <= (1 - 0.406) / 0.225 + 1e-6


def test_result_stays_in_the_normalised_valid_range() -> None:
    model = digits_cnn()
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.25, 0.2]
    start = random_images(2, 16, kind="uniform", mean=mean, std=std)
    for param in ("pixel", "fft"):
        images = SynthesisImage(model, "conv3").attribute(
            start, target=[0, 1], n_iter=5, lr=1.0, param=param, mean=mean, std=std
        )
        values = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        assert float(values.min()) >= -1e-6 and float(values.max()) <= 1 + 1e-6
    free = SynthesisImage(model, "conv3").attribute(
        start, target=[0, 1], n_iter=5, lr=1.0, preset="dnnbrain", clamp=False, mean=mean, std=std
    )
    values = free * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert float(values.min()) < -0.1 or float(values.max()) > 1.05  # DNNBrain: unbounded


def test_presets_follow_dnnbrain_settings() -> None:
    paper = PRESETS["dnnbrain"]
    assert paper["regularizers"] == {"tv": 0.1} and paper["lr"] == 1.0
    assert paper["param"] == "pixel" and paper["transforms"] == "none"
    guide = PRESETS["dnnbrain-guide"]
    assert (guide["lr"], guide["n_iter"], guide["blur_sigma"], guide["fourier_factor"]) == (
        0.1,
        150,
        0.3,
        0.3,
    )
    assert PRESETS["lucent"]["param"] == "fft" and PRESETS["lucent"]["decorrelate"]


def test_model_parameters_get_no_gradient(model: torch.nn.Module) -> None:
    SynthesisImage(model, "conv2").attribute(random_images(1, 16), target=0, n_iter=2)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(regularizers={"l3": 0.1}), ValueError, "unknown regularizer 'l3'"),
        (dict(regularizers={"tv": -0.1}), ValueError, "must be >= 0"),
        (dict(regularizers=[("tv", 0.1)]), TypeError, "must be a mapping"),
        (dict(param="cppn"), ValueError, "unknown parametrisation"),
        (dict(preset="lucid"), ValueError, "unknown preset"),
        (dict(n_iter=0), ValueError, "n_iter must be an int >= 1"),
        (dict(n_iter=2.5), ValueError, "n_iter must be an int >= 1"),
        (dict(lr=-1.0), ValueError, "lr must be"),
        (dict(blur_sigma=-0.3), ValueError, "blur_sigma must be"),
        (dict(fourier_factor=-0.3), ValueError, "fourier_factor must be"),
        (dict(fourier_variant="fft"), ValueError, "fourier_variant must be one of"),
        (dict(snapshot_every=0), ValueError, "snapshot_every must be"),
        (dict(target=64), ValueError, r"target channel 64 is out of range.*0\.\.63"),
        (dict(target=[0, 99]), ValueError, "target channel 99 is out of range"),
        (dict(reduction="median"), ValueError, "reduction must be one of"),
        (dict(transforms="fancy"), ValueError, "transforms must be"),
        (dict(transforms=[3]), TypeError, "every transform must be callable"),
        (dict(std=[1.0, 0.0, 1.0]), ValueError, "std must be > 0"),
        (dict(mean=[0.5, 0.5]), ValueError, "mean has 2 entries"),
        (dict(seed="0"), TypeError, "seed must be an int"),
    ],
)
def test_bad_input(model: torch.nn.Module, kwargs: dict, error: type, match: str) -> None:
    arguments = dict(target=[0, 1], n_iter=1)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        SynthesisImage(model, "conv5").attribute(random_images(2, 16), **arguments)


def test_bad_images_and_layers(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="decorrelate=True needs 3-channel"):
        SynthesisImage(model, "conv5").attribute(
            torch.rand(1, 1, 16, 16), target=0, decorrelate=True, n_iter=1
        )
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        SynthesisImage(model, "conv5").attribute(torch.rand(3, 16, 16), target=0, n_iter=1)
    with pytest.raises(ValueError, match="conv9"):
        SynthesisImage(model, "conv9")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        random_images(0)


def test_training_mode_warns_and_progress_bar_runs() -> None:
    model = digits_cnn().train()
    with pytest.warns(UserWarning, match="training mode"):
        SynthesisImage(model, "conv2").attribute(
            random_images(1, 16), target=0, n_iter=2, show_progress=True
        )
    assert model.training


def test_forward_pass_stops_at_the_target_layer(model: torch.nn.Module) -> None:
    calls = []
    handle = model.classifier.register_forward_hook(lambda *args: calls.append(1))
    try:
        SynthesisImage(model, "conv5").attribute(random_images(2, 16), target=[0, 1], n_iter=2)
        assert calls == []
        SynthesisImage(model).attribute(random_images(1, 32), target=[0], n_iter=2)
        assert len(calls) == 2
    finally:
        handle.remove()


def test_default_preset_works_on_grey_images() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    start = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    images = SynthesisImage(model, "1").attribute(start, target=[0, 3], n_iter=3)
    assert images.shape == (2, 1, 10, 10)
    with pytest.raises(ValueError, match="decorrelate=True needs 3-channel"):
        SynthesisImage(model, "1").attribute(start, target=0, n_iter=3, decorrelate=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("preset", ["default", "dnnbrain"])
def test_low_precision_model_synthesises(dtype: torch.dtype, preset: str) -> None:
    # Issue 11: the colour decorrelation's matrix inverse (and the FFT) have no half kernels on
    # CPU; the parameters live in float32 and only the forward pass runs in the model's dtype.
    model = digits_cnn().to(dtype)
    start = random_images(2, 16, dtype=dtype, seed=4)
    result = SynthesisImage(model, "conv3").attribute(
        start, target=[0, 1], n_iter=6, preset=preset, return_history=True
    )
    assert isinstance(result, SynthesisResult)
    assert result.images.dtype == dtype and result.images.shape == start.shape
    assert bool(result.images.isfinite().all())
    reference = SynthesisImage(digits_cnn(), "conv3").attribute(
        start.float(), target=[0, 1], n_iter=6, preset=preset, return_history=True
    )
    assert isinstance(reference, SynthesisResult)
    # Adam's normalised steps amplify rounding (lr 1 flips whole pixels), so the images are not
    # compared; the optimisation makes the same progress as in float32.
    assert bool((result.activation[:, -1] > result.activation[:, 0]).all())
    gain, gain32 = (r.activation[:, -1] - r.activation[:, 0] for r in (result, reference))
    assert bool((gain > 0.5 * gain32).all()), (gain, gain32)


def test_unsupported_low_precision_forward_names_the_dtype() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")
        return x.mean(dim=(2, 3))

    with pytest.raises(TypeError, match="torch.float16"):
        SynthesisImage(forward).attribute(
            random_images(1, 8, dtype=torch.float16), target=0, n_iter=1
        )


@pytest.mark.parametrize("preset", ["dnnbrain", "dnnbrain-guide", "default"])
def test_channels_last_input_gives_the_contiguous_result(preset: str) -> None:
    # Issue 11: the fused Adam step read a channels-last parameter in the wrong order.
    model = digits_cnn()
    start = random_images(2, 16, kind="uniform", seed=3)
    strided = start.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    synth = SynthesisImage(model, "conv3")
    plain = synth.attribute(start, target=[0, 1], n_iter=5, preset=preset)
    other = synth.attribute(strided, target=[0, 1], n_iter=5, preset=preset)
    torch.testing.assert_close(other, plain, rtol=0, atol=1e-6)
    transposed = start.transpose(2, 3).contiguous().transpose(2, 3)  # another strided copy
    torch.testing.assert_close(
        synth.attribute(transposed, target=[0, 1], n_iter=5, preset=preset),
        plain,
        rtol=0,
        atol=1e-6,
    )


def test_diversity_gives_different_solutions_for_one_channel(model: torch.nn.Module) -> None:
    from dnnbrain_captum.optim import diversity_penalty

    start = random_images(4, 32, seed=5)  # grey, 1 % noise: four nearly equal starts
    synth = SynthesisImage(model, "conv4")
    options = dict(target=7, n_iter=32, return_history=True)
    alike = synth.attribute(start, **options)
    varied = synth.attribute(start, diversity=4.0, **options)
    assert isinstance(alike, SynthesisResult) and isinstance(varied, SynthesisResult)
    off = ~torch.eye(4, dtype=torch.bool)
    spread = [
        torch.cdist(r.images.flatten(1), r.images.flatten(1))[off].mean() for r in (alike, varied)
    ]
    assert float(spread[1]) > 1.5 * float(spread[0]), spread
    with torch.no_grad():
        maps = [model.features[:9](r.images) for r in (alike, varied)]
    assert float(diversity_penalty(maps[1]).mean()) < float(diversity_penalty(maps[0]).mean())
    # Still syntheses of the channel: every image drives it above its start (measured rises
    # 0.49 to 1.44 with λ = 4, the channel's values being around -3).
    assert bool((varied.activation[:, -1] > varied.activation[:, 0] + 0.3).all())
    with pytest.raises(ValueError, match="diversity needs a layer"):
        SynthesisImage(model).attribute(start, target=0, n_iter=1, diversity=1.0)
    with pytest.raises(ValueError, match="diversity must be"):
        synth.attribute(start, target=0, n_iter=1, diversity=-1.0)


def test_redirected_relu_moves_a_silent_channel(model: torch.nn.Module) -> None:
    # conv3 channel 17 never fires on the held-out digits; from grey it is silent after its
    # ReLU, so without redirection the gradient is zero and the image never changes.
    start = random_images(1, 32, seed=1)
    synth = SynthesisImage(model, "conv3_relu")
    still = synth.attribute(start, target=17, n_iter=4, redirect_relu=False)
    moved = synth.attribute(start, target=17, n_iter=4, redirect_relu=True)
    torch.testing.assert_close(
        still,
        synth.attribute(start, target=17, n_iter=1, lr=1e-9, redirect_relu=False),
        rtol=0,
        atol=1e-6,
    )
    assert float((moved - still).abs().max()) > 1e-2
    with torch.no_grad():
        before = model.features[:7](start)[0, 17].amax()
        after = model.features[:7](moved)[0, 17].amax()
    # The silent example climbs its unit closest to firing (the rectified surrogate).
    assert float(after) > float(before)


@pytest.mark.parametrize("kind", ["grey", "uniform"])
def test_default_synthesis_beats_the_data_on_every_conv1_relu_channel(
    model: torch.nn.Module, kind: str
) -> None:
    # A representative part of the sweep in benchmarks/README.md (bench_synthesis.py --sweep):
    # default preset and steps, grey or noise start, every channel in one batch, after the
    # ReLU. Channel 10 is silent on every held-out digit: the redirected ReLU gradient makes
    # it fire (without it the gradient is zero and the image never moves).
    images, _ = digits_images("test")
    with torch.no_grad():
        best = model.features[:2](images).mean(dim=(2, 3)).max(0).values
    channels = list(range(16))
    start = random_images(16, 32, kind=kind, seed=1)
    result = SynthesisImage(model, "conv1_relu").attribute(start, target=channels)
    with torch.no_grad():
        reached = model.features[:2](result).mean(dim=(2, 3))[torch.arange(16), channels]
    assert bool((reached > best).all()), reached - best


def test_adam_is_the_fused_kernel_on_every_device_and_equals_the_other_forms(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CPU and an accelerator use one implementation (fused; before, CUDA float64 fell back
    # to foreach); the three forms agree to rounding, so a CPU/CUDA gap is not Adam's.
    from dnnbrain_captum.optim import _settings, synthesis

    for dtype in (torch.float32, torch.float64):
        assert _settings.adam_kernel(torch.zeros(1, dtype=dtype)) == {"fused": True}
        assert _settings.adam_kernel(torch.zeros(1, dtype=dtype, device="meta")) == {}
    double = digits_cnn().double()
    start = random_images(2, 32, kind="uniform", dtype=torch.float64)

    def run() -> torch.Tensor:
        return SynthesisImage(double, "conv5").attribute(start, target=[0, 1], n_iter=8)

    fused = run()
    for form in ({"foreach": True}, {"foreach": False}):
        monkeypatch.setattr(synthesis, "adam_kernel", lambda tensor, form=form: form)
        torch.testing.assert_close(run(), fused, rtol=0, atol=1e-12)


def test_polish_steps_see_the_returned_image(model: torch.nn.Module) -> None:
    # With polish=1 no step is transformed: the history's step values are the untransformed
    # image's, so the value before step k+1 equals what step k left (the final entry included).
    start = random_images(2, 32, kind="uniform", seed=4)
    result = SynthesisImage(model, "conv4").attribute(
        start, target=[1, 2], n_iter=6, polish=1.0, return_history=True
    )
    plain = SynthesisImage(model, "conv4").attribute(
        start, target=[1, 2], n_iter=6, transforms="none", return_history=True
    )
    torch.testing.assert_close(result.activation, plain.activation)
    torch.testing.assert_close(result.images, plain.images)
    with pytest.raises(ValueError, match="polish"):
        SynthesisImage(model, "conv4").attribute(start, target=[1, 2], n_iter=2, polish=1.5)
    with pytest.raises(ValueError, match="polish"):
        SynthesisImage(model, "conv4").attribute(start, target=[1, 2], n_iter=2, polish=-0.1)


def test_rectified_history_is_the_true_activation(model: torch.nn.Module) -> None:
    # conv3_relu channel 17 is silent from grey: the steps climb the surrogate (negative), the
    # history reports the true rectified value (>= 0), its last entry the returned image's.
    start = random_images(2, 32, seed=1)
    result = SynthesisImage(model, "conv3_relu").attribute(
        start, target=[17, 0], n_iter=6, return_history=True
    )
    assert bool((result.activation >= 0).all())
    with torch.no_grad():
        true = evaluate_target(model, model.features[7], (result.images,), [17, 0])
    torch.testing.assert_close(result.activation[:, -1], true)
