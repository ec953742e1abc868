"""What a caller does when its incremental path fails: raise or fall back, one rule."""

from __future__ import annotations

import logging

from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported


def refuse_or_fall_back(
    reason: Exception, method: str, logger: logging.Logger, fallback: str
) -> None:
    """Raise for ``method="incremental"``; under ``"auto"`` log why the full path is used.

    Any failure of the fast path counts (the full path is exact): an exception other than
    :class:`IncrementalUnsupported` is reported with its type. Call it inside the ``except``
    block; it returns only when the caller should take the full path.

    Parameters
    ----------
    reason : Exception
        What stopped the incremental path.
    method : str
        The caller's ``method`` argument (``"auto"`` or ``"incremental"``).
    logger : logging.Logger
        The caller's logger (the reason is logged at DEBUG level).
    fallback : str
        What the caller does instead, e.g. ``"occlusion map by full recompute"``.

    Raises
    ------
    ValueError
        For ``method="incremental"``, naming the reason.
    """
    if not isinstance(reason, IncrementalUnsupported):
        reason = IncrementalUnsupported(f"{type(reason).__name__}: {reason}")
    if method == "incremental":
        raise ValueError(f"method='incremental' is not possible here: {reason}") from None
    logger.debug("%s: %s", fallback, reason)
