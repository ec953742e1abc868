"""A unit atlas: every channel of some layers characterised over a stimulus set, as a static site.

:func:`build_atlas` finds each channel's top-K and bottom-K stimuli in one streaming pass over the
stimuli (every channel of every layer at once), then computes, batched across channels, the
upsampled activation and occlusion maps of the top stimuli, the theoretical and empirical
receptive fields, a few syntheses and the minimal image of the top stimulus, each piece through
:func:`dnnbrain_captum.run_over` (resumable, torchrun-sharded). It writes ``index.html``, one page
per channel and ``atlas.json``; :func:`read_atlas` reads the latter back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dnnbrain_captum.atlas._activations import ChannelActivations, rank_stimuli
from dnnbrain_captum.atlas._plans import parse_channels
from dnnbrain_captum.atlas.build import AtlasSummary, build_atlas

__all__ = [
    "AtlasSummary",
    "ChannelActivations",
    "build_atlas",
    "parse_channels",
    "rank_stimuli",
    "read_atlas",
]


def read_atlas(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of ``out/atlas.json``: settings, and per layer the record of every channel.

    Raises
    ------
    FileNotFoundError
        Naming the file, if ``out`` holds no finished atlas.
    """
    path = Path(out) / "atlas.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {out} holds no finished atlas")
    return json.loads(path.read_text("utf-8"))
