"""torch.distributed plumbing for ``build`` under ``torchrun`` (gloo on CPU).

Work is split by shard index (``shard % world_size == rank``), so every rank computes
whole, independent shards and the result does not depend on the number of processes.
Rank 0 alone does everything that writes shared files outside the shards.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.world_size == self.rank

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextmanager
def distributed_topology() -> Iterator[Topology]:
    """Join the process group when launched by torchrun, and leave it on exit."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Topology()
        return
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    try:
        yield Topology(rank=dist.get_rank(), world_size=dist.get_world_size())
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()
