"""Several processes (``torchrun``) fitting one protector: gradients averaged, sample-wise perturbations gathered.

Every rank builds the same networks from the same seed and sees its own shard of the data (a
``DistributedSampler``). After each backward pass the gradients of the networks being trained are averaged
over the ranks (what ``DistributedDataParallel`` does; done by hand here because the noise steps differentiate
through the surrogate with ``torch.autograd.grad``, which DDP's reducer does not expect), so the networks
stay identical. Sample-wise perturbations are learned by the rank that holds the sample; at the end each
sample's perturbation is taken from the lowest rank that owned it (a ``DistributedSampler`` that pads its
shards to equal length gives a few samples to two ranks: the copy of the higher rank is dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "FixedShardSampler",
    "average_gradients",
    "gather_from_owners",
    "is_distributed",
    "reduce_sum",
    "world_size",
]


class FixedShardSampler(torch.utils.data.distributed.DistributedSampler):
    """A ``DistributedSampler`` whose shards stay the same in every epoch, shuffled within each shard per epoch.

    PyTorch's and MONAI's samplers deal the whole dataset out anew every epoch; a sample-wise perturbation
    lives on the rank that learns it, so here every sample stays with one rank (two for the few that pad the
    shards to equal length, ``even_divisible``). The shards come from one seeded permutation of the dataset.

    Args:
        dataset: the training dataset.
        num_replicas: number of processes (default: the process group's size).
        rank: this process's rank (default: the process group's).
        shuffle: shuffle each shard per epoch (``set_epoch``) (default ``True``).
        seed: seed of the permutation and of the per-epoch shuffles (default 0).
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        order += order[: self.total_size - len(order)]  # pad to equal shards
        self.shard = order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        if not self.shuffle:
            return iter(self.shard)
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * (self.epoch + 1) + self.rank)
        return iter([self.shard[i] for i in torch.randperm(len(self.shard), generator=generator).tolist()])

    def __len__(self) -> int:
        return len(self.shard)


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes (nothing to do in a single process)."""
    if not is_distributed():
        return
    size = float(dist.get_world_size())
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(size)


def reduce_sum(*values: float) -> list[float]:
    """Sum numbers over the processes (e.g. the wrong and total counts of an error rate)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def gather_from_owners(protector: Any) -> None:
    """Give every rank the sample-wise perturbations of all samples, each from the lowest rank that owned it.

    For protectors with a ``delta`` tensor of one row per training sample and an ``owned`` boolean mask of the
    rows this rank updated (SALM, EM, EM-seg). Class-wise perturbations (one row per class, updated by every
    rank) are averaged instead. Protectors without ``delta`` (UMed's generators are kept identical by the
    averaged gradients) are left alone.
    """
    delta = getattr(protector, "delta", None)
    if not is_distributed() or delta is None:
        return
    device = delta.device if dist.get_backend() != "nccl" else torch.device("cuda", torch.cuda.current_device())
    local = delta.detach().to(device)
    if getattr(protector, "classwise", False):
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        protector.delta = (local / dist.get_world_size()).to(delta.device)
        return
    owned = protector.owned.to(device=device, dtype=torch.uint8)
    deltas = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    owners = [torch.empty_like(owned) for _ in range(dist.get_world_size())]
    dist.all_gather(deltas, local)
    dist.all_gather(owners, owned)
    result = torch.zeros_like(local)
    taken = torch.zeros_like(owned, dtype=torch.bool)
    for rank_delta, rank_owned in zip(deltas, owners, strict=True):
        take = rank_owned.bool() & ~taken
        result[take] = rank_delta[take]
        taken |= take
    protector.delta = result.to(delta.device)
    protector.owned = taken.to(protector.owned.device)
