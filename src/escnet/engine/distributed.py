"""Data-parallel training with PyTorch DDP, started by ``torchrun``.

``torchrun --nproc_per_node N -m escnet train ...`` starts N copies of escnet; each reads its
rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) and joins the process group: gloo on CPU, NCCL on GPUs with one GPU per
process. Every rank trains on its share of each global batch (``train.batch_size`` is the
global batch, split evenly: the learning rate means what it means in a one-process run),
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and the
held-out fold is split between the ranks and gathered, so the accuracy is the whole fold's.
Only rank 0 writes the run directory and prints.

Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from escnet.config import TaskConfig
from escnet.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's part of ``indices``: every ``world``-th, from its rank."""
        return indices[self.rank :: self.world]

    def gather(self, part: object) -> list:
        """Every rank's ``part``, in rank order, on every rank."""
        if not self.active:
            return [part]
        out: list = [None] * self.world
        dist.all_gather_object(out, part)
        return out

    def total(self, *values: float) -> list[float]:
        """Sums over the ranks."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


ALONE = Ranks()
"""One process: no group."""


def setup(config: TaskConfig) -> Ranks:
    """Join the process group torchrun set up, or return a one-process :class:`Ranks`.

    Raises:
        ConfigError: more processes on this node than GPUs, or a global batch that does not
            split evenly between the processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ALONE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if config.train.batch_size % world:
        raise ConfigError(f"setting train.batch_size={config.train.batch_size}: the global batch "
                          f"must split evenly between the {world} processes")
    if config.resolved_device().startswith("cuda"):
        if local_world > torch.cuda.device_count():
            raise ConfigError(f"torchrun --nproc_per_node {local_world}: this machine has "
                              f"{torch.cuda.device_count()} GPU(s); one process per GPU")
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        # the node's cores shared out: oversubscribed threads spin and slow every process
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_world))
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return Ranks(rank, world)
