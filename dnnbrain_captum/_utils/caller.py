"""Warnings that point at the user's line, however many wrappers lie in between.

``warnings.warn`` names the file and line ``stacklevel`` frames up, and that is also what
warning filters match. A fixed count is wrong as soon as a decorator adds a frame (Captum's
usage logger, :func:`~dnnbrain_captum._utils.aliases.captum_keyword_aliases`) or a helper moves
the call one function down; :func:`warn_at_caller` counts the frames instead, up to the first
one outside this package, Captum and PyTorch.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import captum
import torch

__all__ = ["NOT_THE_CALLER", "warn_at_caller"]


#: Files standing for the folders whose frames are not the user's: this package, Captum (its
#: wrappers call ours) and PyTorch (``torch.no_grad`` used as a decorator adds frames).
NOT_THE_CALLER: list[str] = [os.path.dirname(__file__), captum.__file__, torch.__file__]


def _is_internal(frame: FrameType) -> bool:
    folders = tuple(os.path.dirname(os.path.realpath(f)) + os.sep for f in NOT_THE_CALLER)
    return os.path.realpath(frame.f_code.co_filename).startswith(folders)


def warn_at_caller(message: str) -> None:
    """``warnings.warn(message, UserWarning)`` located at the first frame outside the package.

    Parameters
    ----------
    message : str
        The warning's text.
    """
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and _is_internal(frame):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)  # category: UserWarning, the default
