"""Shared fixtures: fixed seeds, a small thread count, a non-interactive matplotlib."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _count_mutmut_frames_as_the_packages() -> None:
    """Under mutation testing, mutmut's trampoline sits between every two functions of ours.

    Warnings are located at the first frame outside the package (``_utils/caller.py``); the
    trampoline is part of the mutated package, not the caller, so its folder is added to
    ``NOT_THE_CALLER`` when the package is imported from mutmut's ``mutants/`` copy.
    """
    from pathlib import Path

    from dnnbrain_captum._utils import caller

    if Path(caller.__file__).resolve().parents[2].name != "mutants":
        return
    import mutmut

    caller.NOT_THE_CALLER.append(mutmut.__file__)


_count_mutmut_frames_as_the_packages()
