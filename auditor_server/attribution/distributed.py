"""torch.distributed plumbing for ``build`` under ``torchrun``: NCCL on CUDA, gloo on CPU.

Work is split by shard index (``shard % world_size == rank``), so every rank computes
whole, independent shards and the result does not depend on the number of processes.
Ranks talk only through collectives of fixed-type numeric tensors (sums of second
moments, the row table's parts) and through the index directory, which every node must see
(a shared filesystem): rank 0 alone writes the files outside the shards.

Multi-node runs use torchrun's own rendezvous (``--nnodes``, ``--rdzv-backend c10d``,
``--rdzv-endpoint``); nothing here launches processes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray

from auditor_server.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """This process's place in the job, and the device its model and collectives use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.world_size == self.rank

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """Element-wise sum of ``array`` over all ranks (every rank gets the sum)."""
        if self.world_size == 1:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return np.asarray(tensor.cpu().numpy(), dtype=np.float64)

    def all_gather_rows(self, part: NDArray[np.int64]) -> NDArray[np.int64]:
        """Every rank's ``(n_r, k)`` int64 block, concatenated in rank order, on every rank.

        Blocks may differ in length; they are padded to the longest for the collective and
        cut back after, so nothing but int64 numbers crosses the process group.
        """
        if self.world_size == 1:
            return part
        width = part.shape[1]
        count = torch.tensor([part.shape[0]], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        longest = max(sizes)
        padded = torch.zeros((longest, width), dtype=torch.int64, device=self.device)
        padded[: part.shape[0]] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
        gathered = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return np.concatenate(
            [g[:n].cpu().numpy() for g, n in zip(gathered, sizes, strict=True)], axis=0
        )

    def share(self, n_items: int) -> range:
        """This rank's contiguous slice of ``n_items`` items (sizes differ by at most one)."""
        base, extra = divmod(n_items, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))


def rank_device(requested: str, *, local_rank: int, world_size: int) -> str:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.

    Why: every rank of a node would otherwise load its model replica on ``cuda:0``. An
    explicit ``cuda:N`` is refused with more than one process, for the same reason.
    """
    if not requested.startswith("cuda"):
        return requested
    if world_size > 1:
        if requested != "cuda":
            raise ConfigError(
                f"--device {requested} under torchrun would put every rank on one GPU; "
                "pass --device cuda and each rank uses cuda:LOCAL_RANK"
            )
        return f"cuda:{local_rank}"
    return requested


@contextmanager
def distributed_topology(device: str = "cpu") -> Iterator[Topology]:
    """Join the process group when launched by torchrun, and leave it on exit.

    The backend follows the device: NCCL for CUDA ranks (each pinned to its
    ``LOCAL_RANK`` GPU), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = rank_device(device, local_rank=local_rank, world_size=world)
    if world <= 1:
        yield Topology(device=resolved)
        return
    on_cuda = resolved.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(torch.device(resolved))
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=datetime.timedelta(hours=6))
    if not on_cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    try:
        yield Topology(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            device=resolved,
        )
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()
