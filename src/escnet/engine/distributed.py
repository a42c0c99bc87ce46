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
from escnet.machine import available_cores


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


class _SummedOverRanks(torch.autograd.Function):
    """A tensor summed over the ranks, differentiably: each rank's gradient of the sum is the
    sum of every rank's gradient (what ``torch.distributed.nn.functional.all_reduce`` did
    before PyTorch deprecated it, without the warning it now prints on every batch)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GroupBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the whole global batch on CPU, where PyTorch's ``SyncBatchNorm`` does not
    run: each process sums its share's per-channel ``x`` and ``x²`` (in float64), one
    differentiable all-reduce adds them up, and every process normalises with the global
    moments, so gradients flow through the moments of every rank's examples, as in a
    one-process run over the whole batch. Same parameters and buffers as the BatchNorm it
    replaces (:func:`group_batch_norm`), so checkpoints load into a plain model."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)])
        total = _SummedOverRanks.apply(local)
        channels = x.shape[1]
        count = total[-1]
        mean = total[:channels] / count
        var = (total[channels : 2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        # the moments in float64 (a difference of large sums), the activations in their own type
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def group_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`GroupBatchNorm` holding the same
    weights and statistics."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GroupBatchNorm):
        out = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out.to(next(module.buffers()).device)
    for name, child in module.named_children():
        setattr(module, name, group_batch_norm(child))
    return module


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
        torch.set_num_threads(max(1, available_cores() // local_world))
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return Ranks(rank, world)
