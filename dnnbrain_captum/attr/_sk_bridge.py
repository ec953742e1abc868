"""The one place in ``attr/`` where tensors meet numpy: scikit-image and scikit-learn calls.

Both libraries take numpy arrays only. These helpers take a tensor, hand a float64 copy to
the library and return tensors on the caller's device and dtype; nothing else in ``attr/``
converts to numpy.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from dnnbrain_captum._utils.caller import warn_at_caller

__all__ = ["SEGMENTATIONS", "fit_components", "segment"]

SEGMENTATIONS = {
    "felzenszwalb": {"scale": 100, "sigma": 0.5, "min_size": 50},
    "slic": {"n_segments": 250, "compactness": 10, "sigma": 1},
    "quickshift": {"kernel_size": 3, "max_dist": 6, "ratio": 0.5},
}


def segment(image: Tensor, method: str, options: dict[str, Any] | None = None) -> Tensor:
    """Superpixel labels of one image, numbered 0, 1, ... (consecutive).

    The image (C, H, W), in model space, is min–max rescaled to [0, 1] (all channels jointly)
    and laid out (H, W, C) for scikit-image; a one-channel image is passed as (H, W). Every
    option goes by keyword, on top of the defaults in :data:`SEGMENTATIONS`. SLIC labels start
    at 0; quickshift converts to Lab only for 3-channel images.

    Returns
    -------
    Tensor of shape (H, W), long, on ``image.device``
    """
    from skimage import segmentation

    if method not in SEGMENTATIONS:
        raise ValueError(
            f"segmentation must be one of {sorted(SEGMENTATIONS)} (or give feature_mask), "
            f"got {method!r}"
        )
    kwargs: dict[str, Any] = {**SEGMENTATIONS[method], **(options or {})}
    data = image.detach().to("cpu", torch.float64)
    low, high = data.min(), data.max()
    data = (data - low) / (high - low) if high > low else torch.zeros_like(data)
    channels = data.shape[0]
    array = data[0].numpy() if channels == 1 else data.permute(1, 2, 0).contiguous().numpy()
    axis = None if channels == 1 else -1
    with warnings.catch_warnings():
        # skimage warns that a 4-channel image "may not be intended": here it is.
        warnings.filterwarnings("ignore", message=".*third dimension of 4.*")
        try:
            if method == "felzenszwalb":
                labels = segmentation.felzenszwalb(array, channel_axis=axis, **kwargs)
            elif method == "slic":
                kwargs.setdefault("start_label", 0)
                if channels != 3:
                    kwargs.setdefault("convert2lab", False)
                labels = segmentation.slic(array, channel_axis=axis, **kwargs)
            else:
                if channels == 1:
                    array, axis = array[:, :, None], -1
                if channels != 3:
                    kwargs.setdefault("convert2lab", False)
                labels = segmentation.quickshift(array, channel_axis=axis, **kwargs)
        except TypeError as error:
            raise TypeError(f"bad segmentation_kwargs for {method}: {error}") from None
    flat = torch.as_tensor(labels, dtype=torch.long).flatten()
    _, consecutive = torch.unique(flat, return_inverse=True)
    return consecutive.view(labels.shape).to(image.device)


def fit_components(
    samples: Tensor, method: str, n_components: int, seed: int, max_iter: int = 1000
) -> tuple[Tensor, Tensor, Tensor]:
    """PCA or FastICA of ``samples`` (L, D): ``samples ≈ mean + coefficients @ basis``.

    Returns
    -------
    mean : Tensor of shape (D,)
    basis : Tensor of shape (K, D)
        PCA: the principal axes (by decreasing variance). ICA: the mixing vectors of FastICA
        run on the K principal scores (so the whitening sees only the kept subspace).
    coefficients : Tensor of shape (L, K)
        Each sample's weight on each component.
    """
    import numpy as np
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    data = samples.detach().to("cpu", torch.float64).numpy()
    pca = PCA(n_components=n_components, svd_solver="full")
    coefficients = pca.fit_transform(data)
    basis, mean = pca.components_, pca.mean_
    if method == "ica":
        # FastICA on the K principal scores: its whitening then only sees the K-dimensional
        # signal, never the (near-)zero singular values of the discarded directions.
        if pca.explained_variance_[-1] <= 1e-12 * max(pca.explained_variance_[0], 1e-300):
            raise ValueError(
                f"the samples span fewer than n_components={n_components} dimensions; "
                "ICA needs fewer components"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            ica = FastICA(
                n_components=n_components,
                whiten="unit-variance",
                random_state=seed,
                max_iter=max_iter,
            )
            # A fixed random rotation: FastICA does not care, but it keeps sklearn's sign
            # convention (u *= sign(u[0])) away from the exact zeros of decorrelated scores.
            rotation, _ = np.linalg.qr(
                np.random.default_rng(seed).standard_normal((n_components, n_components))
            )
            sources = ica.fit_transform(coefficients @ rotation)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            warn_at_caller(
                f"FastICA did not converge in {max_iter} iterations; the components are "
                "approximate (reconstruction from all of them is still exact up to rounding)",
            )
        # data = mean + scores @ basis, scores @ rotation = sources @ mixing.T + ica.mean_
        basis = rotation.T @ basis  # orthogonal: scores = (scores @ rotation) @ rotation.T
        mean = mean + ica.mean_ @ basis
        basis = ica.mixing_.T @ basis
        coefficients = sources

    def back(array: Any) -> Tensor:
        return torch.as_tensor(array.copy()).to(device=samples.device, dtype=samples.dtype)

    return back(mean), back(basis), back(coefficients)
