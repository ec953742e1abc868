"""A tiny atlas for subprocess tests (plain python or torchrun).

    python tests/helpers/atlas_job.py OUT IMAGES.pt [--kill-in PIECE --kill-after K]

The stimuli come from ``IMAGES.pt`` (saved by the test: a fresh process then needs no
scikit-learn). ``--kill-in occlusion --kill-after 1`` sends SIGKILL to this process when the
occlusion piece's ``attribute`` is called for the second time: one chunk of that piece is done,
the rest is lost.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from dnnbrain_captum import digits_cnn
from dnnbrain_captum.atlas import build_atlas

SETTINGS = {
    "channels": "0-2",
    "top_k": 2,
    "n_syntheses": 2,
    "synthesis": {"n_iter": 2},
    "occlusion": {"sliding_window_shapes": (16, 16), "strides": (8, 8)},
    "batch_size": 2,
}
N_IMAGES = 10


def tiny_images() -> torch.Tensor:
    """The stimuli of the tiny atlas."""
    from dnnbrain_captum import digits_images

    return digits_images(n=N_IMAGES)[0]


def tiny_atlas(out: str, images: torch.Tensor) -> None:
    """The atlas every subprocess test builds."""
    build_atlas(digits_cnn(), ["conv3", "conv5"], images, out, **SETTINGS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("images")
    parser.add_argument("--kill-in", default=None)
    parser.add_argument("--kill-after", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.kill_in is not None:
        from dnnbrain_captum.atlas._occlusion import ChannelOcclusion

        kinds = {"occlusion": ChannelOcclusion}
        cls = kinds[args.kill_in]
        original = cls.attribute
        calls = {"n": 0}

        def dying(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            if calls["n"] == args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            calls["n"] += 1
            return original(self, *a, **k)

        cls.attribute = dying
    tiny_atlas(args.out, torch.load(args.images))
    print(f"DONE rank {os.environ.get('RANK', '0')}", flush=True)


if __name__ == "__main__":
    main()
