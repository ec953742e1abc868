"""Activation maximisation: synthesise the images that drive a channel, unit or class.

DNNBrain's ``SynthesisImage`` (every option, its bugs fixed) together with the techniques of
Lucid-style feature visualisation (Olah et al. 2017): 1/f Fourier parametrisation, colour
decorrelation and transformation robustness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn
from tqdm.auto import tqdm

from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.hooks import warn_if_training
from dnnbrain_captum._utils.layers import LayerSpec, resolve_layer
from dnnbrain_captum._utils.layouts import ReshapeTransform, check_reshape_transform
from dnnbrain_captum._utils.targets import (
    check_reduction,
    evaluate_target,
    layer_output,
    select_layer_target,
)
from dnnbrain_captum._utils.validation import check_image_batch
from dnnbrain_captum.optim._ignite import ignition_objective, reignite
from dnnbrain_captum.optim._loop import (
    History,
    Options,
    SynthesisResult,
    resolve_options,
    update,
    view,
    weighted_penalty,
)
from dnnbrain_captum.optim._objectives import diversity_penalty
from dnnbrain_captum.optim._param import ImageParam, ValueRange, random_images
from dnnbrain_captum.optim._relu import (
    output_hooked,
    rectified_objective,
    redirected_relu,
    temperature,
)
from dnnbrain_captum.optim._settings import (
    LOW_PRECISION,
    PRESETS,
    adam_kernel,
    refusing_low_precision,
)
from dnnbrain_captum.optim._transforms import Transform

__all__ = ["PRESETS", "SynthesisImage", "SynthesisResult", "random_images"]

#: ``(target, reduction, additional_forward_args)`` of one ``attribute`` call.
_Task = tuple[Any, str, Any]


@captum_keyword_aliases
class SynthesisImage(NeuronAttribution, GradientAttribution):
    """Activation maximisation: images that maximise a channel, a unit or a class score.

    Starting from ``inputs``, each image is optimised by Adam so that its own target
    (one per example, so a whole layer's channels synthesise in one batch) is as large as
    possible, minus weighted regularisers. Only the image is optimised: gradients are taken
    with respect to the image parameters alone, and the forward pass stops at ``layer``.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module, str or None
        The layer whose channel or unit is maximised (module, dotted path or DNNBrain alias);
        None maximises a model output (e.g. a class logit) selected by Captum's target.
    reshape_transform : callable, optional
        Maps the layer's output to ``(N, C, H, W)`` (channels-first). By default the layout
        is established (``dnnbrain_captum._utils.layouts``): channels-first maps as they are,
        ViT tokens, Swin/ConvNeXt channels-last maps rearranged, anything else refused.

    Notes
    -----
    One step: render the image from its parameters; apply the random transforms (one draw
    per step for the whole batch, from a generator seeded with ``seed``; the result is resized
    back to the input size if a transform changed it); evaluate the target up to ``layer``;
    take the gradient of ``Σ_n (penalty_n − activation_n)`` with respect to the parameters;
    optionally smooth it in the Fourier domain; take an Adam step; optionally blur the
    parameters; project plain pixels back into the valid range.

    Because each example's loss involves only its own image, Adam acts element-wise and the
    random transforms are shared by the batch, a batched run gives each example exactly what a
    run on that example alone (same seed) gives, up to floating-point rounding.

    Differences from DNNBrain's ``SynthesisImage`` (bugs fixed): the regulariser weight
    defaults to no regulariser instead of crashing; Gaussian-blur preconditioning blurs each
    colour channel in 2-D and keeps Adam's state (DNNBrain blurred across colours and restarted
    Adam every step); Fourier smoothing uses the true FFT frequencies by default
    (``fourier_variant="dnnbrain"`` gives the original off-by-one filter) and runs on current
    PyTorch; the image is kept in the valid range (``clamp``) given the model's ``mean``/``std``;
    nothing is printed or saved, snapshots come back in memory; the return type does not change
    with the options you pass, only with ``return_history``/``snapshot_every``; channels are
    0-based.

    Presets (:data:`PRESETS`; explicit arguments override them):

    * ``"default"``: FFT parametrisation with colour decorrelation, standard transforms for
      the first half of the steps and none for the second (``polish=0.5``), Adam lr 0.3,
      256 steps, redirected ReLU gradients; a target behind a ReLU that is still 0 after
      them gets up to 3 × 256 extra steps (``silent_steps``).
    * ``"lucent"``: as Lucent's ``render_vis``: FFT + decorrelation, standard transforms,
      lr 0.05, 512 steps.
    * ``"dnnbrain"``: the DNNBrain paper's figures: pixels, no transforms, TV λ = 0.1,
      lr 1.0, 500 steps (the tutorial's settings for AlexNet fc3).
    * ``"dnnbrain-guide"``: DNNBrain's user-guide example: pixels, TV λ = 0.01, blur σ 0.3,
      Fourier factor 0.3, lr 0.1, 150 steps.

    References
    ----------
    .. [1] Erhan, D., Bengio, Y., Courville, A., Vincent, P. (2009). Visualizing higher-layer
       features of a deep network. University of Montreal technical report 1341.
    .. [2] Olah, C., Mordvintsev, A., Schubert, L. (2017). Feature visualization. Distill.
    .. [3] Walker, E. Y. et al. (2019). Inception loops discover what excites neurons most
       using deep predictive models. Nature Neuroscience 22, 2060–2065.
    .. [4] Chen, X. et al. (2020). DNNBrain: a unifying toolbox for mapping deep neural
       networks and brains. Front. Comput. Neurosci. 14:580632.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn
    >>> model = digits_cnn()
    >>> start = random_images(2, 32)
    >>> images = SynthesisImage(model, "conv5").attribute(start, target=[0, 1], n_iter=8)
    >>> tuple(images.shape)
    (2, 3, 32, 32)
    >>> result = SynthesisImage(model).attribute(
    ...     start, target=[3, 7], n_iter=8, return_history=True)
    >>> tuple(result.activation.shape)
    (2, 9)
    """

    def __init__(
        self,
        forward_func: nn.Module | Callable[..., Any],
        layer: LayerSpec = None,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        module = resolve_layer(forward_func, layer)
        self.reshape_transform = check_reshape_transform(reshape_transform)
        NeuronAttribution.__init__(self, forward_func, module)  # type: ignore[arg-type]
        GradientAttribution.__init__(self, forward_func)

    def _evaluate(self, images: Tensor, target: Any, reduction: str, args: Any) -> Tensor:
        """The target's value per image; a model without kernels for the dtype is refused."""
        return refusing_low_precision(
            images,
            lambda: evaluate_target(
                self.forward_func,
                self.layer,
                (images,),
                target,
                reduction,
                args,
                reshape_transform=self.reshape_transform,
            ),
        )

    def _rectified(
        self, images: Tensor, target: Any, reduction: str, args: Any, tau: float
    ) -> tuple[Tensor, Tensor]:
        """For a ReLU layer: the target's true value and the objective (:mod:`._relu`)."""
        return rectified_objective(self._pre_activation(images, args), target, reduction, tau)

    def _pre_activation(self, images: Tensor, args: Any) -> Tensor:
        """For a ReLU layer: its input (the pre-activation), channels-first."""
        return refusing_low_precision(
            images,
            lambda: layer_output(
                self.forward_func,
                self.layer,
                (images,),
                args,
                self.reshape_transform,
                on_input=True,
            ),
        )

    def _layer_output(self, images: Tensor, args: Any) -> Tensor:
        """The target layer's output (for the diversity term), one tensor (N, C, ...)."""
        output = layer_output(
            self.forward_func, self.layer, (images,), args, self.reshape_transform
        )
        if not isinstance(output, Tensor) or output.dim() < 2:
            raise ValueError(
                "diversity needs a layer whose output is one tensor (N, C, ...); this layer "
                f"gives {type(output).__name__}"
            )
        return output

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        preset: str = "default",
        n_iter: int | None = None,
        lr: float | None = None,
        reduction: str = "mean",
        param: str | None = None,
        decorrelate: bool | None = None,
        transforms: str | Sequence[Transform] | None = None,
        regularizers: Mapping[str, float] | None = None,
        blur_sigma: float | None = None,
        blur_every: int = 1,
        fourier_factor: float | None = None,
        fourier_variant: str = "fftfreq",
        redirect_relu: bool | None = None,
        polish: float | None = None,
        silent_steps: int | None = None,
        diversity: float = 0.0,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        clamp: bool = True,
        seed: int = 0,
        snapshot_every: int | None = None,
        return_history: bool = False,
        show_progress: bool = False,
    ) -> Tensor | SynthesisResult:
        """Synthesise one image per example that maximises its target.

        Arguments left as None take their value from ``preset``.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W)
            Initial images in model space (e.g. from :func:`random_images`).
        target : int, tuple, callable, list or Tensor
            With a layer: a channel, a unit ``(c, i, j)``, a callable
            ``f(layer_output) -> (N,)`` or one of these per example (0-based). Without a
            layer: Captum's target on the model output (e.g. the class index per example).
        additional_forward_args : Any, optional
            Further positional arguments of the model.
        preset : {"default", "lucent", "dnnbrain", "dnnbrain-guide"}
            Named settings for the arguments left as None.
        n_iter : int
            Number of optimisation steps, >= 1.
        lr : float
            Adam's learning rate, > 0 (in parameter units; for plain pixels, model-space units).
        reduction : {"mean", "max", "sum"}
            How a channel becomes one scalar (DNNBrain's ``activ_metric``).
        param : {"pixel", "fft"}
            Image parametrisation: plain pixels or a 1/f-scaled Fourier spectrum.
        decorrelate : bool
            Optimise in a decorrelated colour space (3-channel images only; a preset's
            decorrelation is skipped for images with another number of channels).
        transforms : "standard", "none" or sequence of Transform
            Random transforms applied before each forward pass (see :mod:`._transforms`).
        regularizers : mapping {name: weight}
            Any of ``"l1"``, ``"l2"``, ``"tv"`` (case-insensitive) with weight λ >= 0, measured
            on the model-space image: ``{"tv": 0.1}`` is DNNBrain's ``('TV', 0.1)``.
        blur_sigma : float
            Gaussian-blur preconditioning: blur the parameters with this σ (pixels) after
            every ``blur_every``-th step; 0 turns it off (DNNBrain's ``GB_radius``).
        blur_every : int
            Blur period in steps, >= 1.
        fourier_factor : float
            Fourier gradient smoothing strength (DNNBrain's ``factor``); 0 turns it off.
        fourier_variant : {"fftfreq", "dnnbrain"}
            Frequency indexing of the smoothing filter (see :func:`fourier_filter`).
        redirect_relu : bool
            Redirected ReLU gradients (Olah et al. 2017): an example whose units behind an
            ``nn.ReLU`` are all off still gets the gradient that would switch them on (see
            :mod:`._relu`); forward values are unchanged. When ``layer`` is itself an
            ``nn.ReLU`` (and the target a channel or unit, without diversity), an example whose
            target is exactly 0 maximises instead a soft maximum (τ·log-sum-exp, τ falling
            from 0.3 to 0.01 over the steps) of its target's pre-activations, on the image
            without transforms, until it fires (:func:`._relu.rectified_objective`); the
            activation reported in the history is always the true rectified value.
        silent_steps : int
            Only with a rectified target as above: if an example's target is still exactly 0
            on the image after the ``n_iter`` steps, up to this many extra steps search again
            from its start, as 12 copies in one batch (different temperatures, a softplus
            continuation of the model's ReLUs, the target's border, interior or corner units,
            a low-contrast start: see
            :data:`._ignite.IGNITION_COPIES`), stopping once it has fired for 32 steps; the image
            is replaced only if the target fired, by the image with the highest true value.
            Default: 3 × ``n_iter`` for the ``"default"`` preset, 0 (off) for the others.
            These steps are not in the history; its last entry is the returned image's value.
        polish : float
            Fraction in [0, 1] of the steps, at the end, taken without the random transforms,
            on the image exactly as it is returned (``round(polish * n_iter)`` steps).
        diversity : float
            Weight λ >= 0 of the diversity term (Olah et al. 2017): each example is penalised
            by λ × its mean cosine similarity to the other examples' Gram matrices of the
            layer's output (:func:`diversity_penalty`), so a batch that synthesises one
            channel several times shows different solutions. It couples the examples of a
            batch (a batched run then differs from single runs) and needs a ``layer``. It is
            part of ``penalty`` in the history for the steps, not for the final entry.
        mean, std : float or sequence of float, optional
            The model's input normalisation, ``model = (value − mean) / std``; default none
            (the model takes values directly, like the digits CNN).
        value_range : (low, high)
            Valid unnormalised pixel values.
        clamp : bool
            Keep the image inside ``value_range`` (projection for plain pixels, a sigmoid for
            the other parametrisations) and clamp the result. False reproduces DNNBrain's
            unconstrained images.
        seed : int
            Seed of the random transforms.
        snapshot_every : int, optional
            Keep the image every ``k`` steps (returned in :class:`SynthesisResult`).
        return_history : bool
            Return a :class:`SynthesisResult` with the activation and penalty history.
        show_progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        Tensor of shape (N, C, H, W) or SynthesisResult
            The optimised images in model space, or a :class:`SynthesisResult` when
            ``return_history`` is True or ``snapshot_every`` is given.

        Raises
        ------
        ValueError
            For an unknown preset, parametrisation, regulariser or variant, a negative weight,
            ``n_iter < 1``, ``silent_steps < 0``, a target out of range, or ``decorrelate`` on
            non-RGB images.
        TypeError
            For arguments of the wrong type.
        """
        x = check_image_batch(inputs)
        check_reduction(reduction)
        values = {
            "param": param,
            "decorrelate": decorrelate,
            "transforms": transforms,
            "lr": lr,
            "n_iter": n_iter,
            "regularizers": regularizers,
            "blur_sigma": blur_sigma,
            "fourier_factor": fourier_factor,
            "redirect_relu": redirect_relu,
            "polish": polish,
            "silent_steps": silent_steps,
        }
        options = resolve_options(
            x,
            self.layer is not None,
            preset,
            values,
            blur_every,
            fourier_variant,
            diversity,
            snapshot_every,
            seed,
        )
        # Low-precision models: the parameters, FFTs and colour mixing stay in float32 (CPU
        # has no half kernels for them); only the forward pass runs in the model's dtype.
        work = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
        scale = ValueRange(x.shape[1], mean, std, value_range, work, x.device)
        warn_if_training(self.forward_func)

        image = ImageParam(x.to(work), options.param, options.decorrelate, scale, clamp)
        optimizer = torch.optim.Adam([image.tensor], lr=options.lr, **adam_kernel(image.tensor))
        task = (target, reduction, additional_forward_args)
        history = self._optimise(image, optimizer, x.dtype, work, options, task, show_progress)
        result = image.result().to(x.dtype)
        if options.silent_steps and self._rectifies(target, options):
            result = self._ignite(image, result, x, options, task)
        if not return_history and options.snapshot_every is None:
            return result
        return self._with_history(result, history, work, options, task)

    def _rectifies(self, target: Any, options: Options) -> bool:
        """Whether a silent example climbs its closest unit: a ReLU layer's channel or unit.

        The surrogate reads the ReLU's input and takes ``relu`` of it as the true value, so it
        is used only when no forward hook (the module's own or a global one: a caller's lesion,
        say) can change what the ReLU outputs; otherwise the layer's output is read as is.
        """
        return (
            options.redirect_relu
            and options.diversity == 0
            and isinstance(self.layer, nn.ReLU)
            and not (callable(target) and not isinstance(target, Tensor))
            and not output_hooked(self.layer)
        )

    def _objective(
        self,
        seen: Tensor,
        rendered: Tensor,
        task: _Task,
        options: Options,
        rectified: bool,
        work: torch.dtype,
        tau: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step's ``(activation, penalty, objective)``, each (N,) in ``work`` dtype.

        ``seen`` is the transformed image in the model's dtype, ``rendered`` the untransformed
        one the regularisers measure; the loss is ``Σ (penalty − objective)``.
        """
        target, reduction, args = task
        if options.diversity > 0:
            output = self._layer_output(seen, args)
            activation = select_layer_target(output, target, reduction).to(work)
            spread = options.diversity * diversity_penalty(output.to(work))
            return activation, weighted_penalty(rendered, options.weights) + spread, activation
        if rectified:
            value, surrogate = self._rectified(seen, target, reduction, args, tau)
            activation, objective = value.to(work), surrogate.to(work)
            return activation, weighted_penalty(rendered, options.weights), objective
        activation = self._evaluate(seen, target, reduction, args).to(work)
        return activation, weighted_penalty(rendered, options.weights), activation

    def _optimise(
        self,
        image: ImageParam,
        optimizer: torch.optim.Optimizer,
        dtype: torch.dtype,
        work: torch.dtype,
        options: Options,
        task: _Task,
        show_progress: bool,
    ) -> History:
        """Run the ``n_iter`` steps on ``image``; the history of each step (see Notes)."""
        generator = torch.Generator().manual_seed(options.seed)
        history = History()
        bar = tqdm(range(options.n_iter), desc="Synthesis", disable=not show_progress)
        model = self.forward_func
        redirect = (lambda: redirected_relu(model)) if options.redirect_relu else nullcontext
        rectified = self._rectifies(task[0], options)
        transformed_steps = options.n_iter - options.n_polish
        # Rectified targets at exactly 0 on the last step (at first: all); they see the image
        # untransformed, so what climbs towards firing is the image that is returned.
        silent = torch.ones(image.shape[0], dtype=torch.bool) if rectified else None
        for step in bar:
            if options.snapshot_every is not None and step % options.snapshot_every == 0:
                history.snapshot(image.result().to(dtype), step)
            transforms = options.transforms if step < transformed_steps else ()
            with torch.enable_grad(), redirect():
                rendered = image.render()
                seen = view(rendered, transforms, generator, options.size)
                if silent is not None and transforms:
                    seen = torch.where(silent.to(seen.device).view(-1, 1, 1, 1), rendered, seen)
                activation, penalty, objective = self._objective(
                    seen.to(dtype),
                    rendered,
                    task,
                    options,
                    rectified,
                    work,
                    temperature(step, options.n_iter),
                )
                loss = (penalty - objective).sum()
                (grad,) = torch.autograd.grad(loss, [image.tensor])
            if rectified:
                silent = activation.detach() == 0
            history.record(activation, penalty)
            update(image, optimizer, grad, step, options)
            if show_progress:
                bar.set_postfix(activation=float(activation.detach().mean()))
        bar.close()
        return history

    def _ignite(
        self, image: ImageParam, result: Tensor, start: Tensor, options: Options, task: _Task
    ) -> Tensor:
        """``result``, each still-silent target searched again from ``start`` (:mod:`._ignite`).

        An example's image is replaced only if its target truly fires on the new image.
        """
        target, reduction, args = task
        work = image.tensor.dtype
        with torch.no_grad():
            value = self._evaluate(result, target, reduction, args)

        def objective(
            images: Tensor, part: Any, part_args: Any, schedule: tuple[Tensor, Tensor, Tensor]
        ) -> tuple[Tensor, Tensor]:
            pair = ignition_objective(
                self.forward_func,
                lambda seen: self._pre_activation(seen, part_args),
                lambda seen: self._evaluate(seen, part, reduction, part_args),
                images,
                (part, reduction),
                schedule,
            )
            return pair[0].to(work), pair[1].to(work)

        searched = reignite(result, value, start.to(work), image, options, task, objective)
        if searched is result:
            return result
        # The searches read the ReLU's input; keep a new image only where the true target
        # (the layer's output, the caller's hooks included) fires on it.
        with torch.no_grad():
            fires = self._evaluate(searched, target, reduction, args) > 0
        return torch.where(fires.to(result.device).view(-1, 1, 1, 1), searched, result)

    def _with_history(
        self, result: Tensor, history: History, work: torch.dtype, options: Options, task: _Task
    ) -> SynthesisResult:
        """Close ``history`` with the returned image (N, C, H, W) and stack it."""
        with torch.no_grad():
            final = self._evaluate(result, *task).to(work)
        penalty = weighted_penalty(result.to(work), options.weights)
        return history.close(result, final, penalty, options.n_iter, options.snapshot_every)
