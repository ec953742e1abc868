"""Distributed coordination: rank, world size and the collectives the ranks agree with."""

from __future__ import annotations

import os
from typing import Any

import torch


class _Dist:
    """Rank, world size and a CPU group for coordination (gloo), or a single process."""

    def __init__(self) -> None:
        self.rank, self.world, self.group, self.created = 0, 1, None, False
        if not torch.distributed.is_available():
            return
        dist = torch.distributed
        if not dist.is_initialized():
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if "RANK" not in os.environ or world <= 1:
                return
            dist.init_process_group(backend="gloo")
            self.created = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > 1 and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        result: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(result, obj, group=self.group)
        return result

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _agree(dist: _Dist, error: BaseException | None, payload: Any = None) -> list[Any]:
    """Collective: raise on every rank if any rank failed (its own error on that rank), else
    return every rank's ``payload``."""
    message = None if error is None else f"{type(error).__name__}: {error}"
    gathered = dist.gather((message, payload))
    if error is not None:
        raise error
    failed = [(r, m) for r, (m, _) in enumerate(gathered) if m is not None]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} failed: {message}")
    return [p for _, p in gathered]
