"""A run_over job for subprocess tests (plain python or torchrun).

    python tests/helpers/runner_job.py OUT METHOD N BATCH [--die-after K] [--folder DIR]

METHOD is "saliency", "occlusion" (the digits model) or "tiny" (a 1x1 convolution of fixed
4x4 images, :mod:`tests.helpers.runner_tiny`: no Captum imported, fast to start; needs the
repository on PYTHONPATH).

``--die-after K`` makes the process exit abruptly (``os._exit``, no cleanup, like a kill) when
``attribute`` is called for the (K+1)-th time, so exactly K chunks are complete and the chunk in
flight is lost. ``--folder`` runs over image files instead of the digits tensor.
``--fake-hosts`` makes each rank report its own host name (as if the ranks ran on different
machines: chunk files instead of writes in place). ``--kill-at POINT`` kills the process with
SIGKILL at POINT (``rows:K``: halfway through writing chunk K's rows; ``assemble``: before
result.npy is renamed into place; ``manifest``: after that, before the final manifest).
``--sleep S`` sleeps S seconds in every ``attribute`` call. ``--then-fake-hosts OUT2``
(under torchrun) runs again into OUT2 as with ``--fake-hosts``, both runs in one process group
that the job creates. ``--start-together DIR`` writes ``DIR/ready-PID`` once imported, then
waits for ``DIR/go`` (so that two jobs call ``run_over`` at the same moment).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch

from dnnbrain_captum.runner import run_over

OCCLUSION_KWARGS = {"sliding_window_shapes": (8, 8), "strides": (4, 4)}


def make(method: str):  # noqa: ANN201 - test helper
    if method == "tiny":
        from tests.helpers.runner_tiny import TinyAttribution

        return TinyAttribution(), {}
    from dnnbrain_captum import OccluderDiscrepancyMapping, VanillaSaliencyImage, digits_cnn

    model = digits_cnn()
    if method == "saliency":
        return VanillaSaliencyImage(model, "conv5"), {}
    return OccluderDiscrepancyMapping(model, "conv5"), dict(OCCLUSION_KWARGS)


def _data(args: argparse.Namespace):  # noqa: ANN202 - test helper
    """(data, targets, on_error) of the job."""
    if args.folder:
        from dnnbrain_captum.io import ImageFolderDataset, preprocessing_for

        return ImageFolderDataset(args.folder, transform=preprocessing_for("digits")), 3, "skip"
    if args.method == "tiny":
        from tests.helpers.runner_tiny import tiny_data

        return tiny_data(args.n), None, "raise"
    from dnnbrain_captum import digits_images

    images, labels = digits_images(n=args.n)
    return images, labels, "raise"


def _start_together(folder: str) -> None:
    Path(folder, f"ready-{os.getpid()}").write_text("")
    deadline = time.monotonic() + 120
    while not Path(folder, "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go after 120 s")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("method")
    parser.add_argument("n", type=int)
    parser.add_argument("batch", type=int)
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--fake-hosts", action="store_true")
    parser.add_argument("--kill-at", default=None)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--start-together", default=None)
    parser.add_argument("--then-fake-hosts", default=None)
    args = parser.parse_args()
    if args.kill_at is not None:
        _install_kill(args.kill_at)
    if args.fake_hosts:
        rank = os.environ.get("RANK", "0")
        socket.gethostname = lambda: f"machine{rank}"
    torch.set_num_threads(1)
    attribution, kwargs = make(args.method)
    if args.die_after is not None:
        original = type(attribution).attribute
        calls = {"n": 0}

        def dying(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            if calls["n"] == args.die_after:
                os._exit(3)
            calls["n"] += 1
            return original(self, *a, **k)

        type(attribution).attribute = dying  # class name (the run's identity) unchanged
    if args.sleep:
        slow_original = type(attribution).attribute

        def slow(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            time.sleep(args.sleep)
            return slow_original(self, *a, **k)

        type(attribution).attribute = slow
    data, targets, on_error = _data(args)
    if args.start_together:
        _start_together(args.start_together)
    if args.then_fake_hosts:  # the job's own group: both runs below use it, neither ends it
        torch.distributed.init_process_group(backend="gloo")
    _run(attribution, data, targets, args.out, args.batch, on_error, kwargs)
    if args.then_fake_hosts:  # a second run, as if each rank were on its own machine
        rank = os.environ.get("RANK", "0")
        socket.gethostname = lambda: f"machine{rank}"
        _run(attribution, data, targets, args.then_fake_hosts, args.batch, on_error, kwargs)
        torch.distributed.destroy_process_group()


def _run(attribution, data, targets, out, batch, on_error, kwargs) -> None:  # noqa: ANN001
    summary = run_over(
        attribution, data, targets=targets, out=out, batch_size=batch, on_error=on_error, **kwargs
    )
    result = {
        "rank": summary.rank,
        "world": summary.world_size,
        "computed": summary.computed,
        "reused": summary.reused,
    }
    sys.stdout.write(f"SUMMARY {json.dumps(result)}\n")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(point: str) -> None:
    from dnnbrain_captum.runner import _finish, _storage

    if point.startswith("rows:"):
        chunk_rows = {"start": None}
        original = _storage.Partial.write

        def half_written(self, start, rows):  # noqa: ANN001, ANN202
            if chunk_rows["start"] is None:
                chunk_rows["start"] = int(point.split(":")[1]) * len(rows)
            if start == chunk_rows["start"]:
                original(self, start, rows[: len(rows) // 2])
                _kill()
            return original(self, start, rows)

        _storage.Partial.write = half_written
    elif point == "assemble":
        _finish.sha256_file = lambda *a: _kill()  # type: ignore[assignment]
    elif point == "manifest":
        _finish._final_manifest = lambda *a, **k: _kill()  # type: ignore[assignment]


if __name__ == "__main__":
    main()
