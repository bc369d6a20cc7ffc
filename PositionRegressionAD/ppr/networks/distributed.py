"""Training on several processes started by torchrun: the process group, ranks and the wrapped network.

What it does: ``session(device)`` joins the process group when a launcher (``torchrun``, or anything
that sets WORLD_SIZE > 1 with RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) started this process:
gloo on the CPU, nccl on CUDA with each rank on ``cuda:LOCAL_RANK``. The group is destroyed when the
session ends, on failure too; a session opened inside another shares it. Without such a launcher the
session is ``SINGLE`` (rank 0 of 1) and every helper below does nothing, so single-process training
runs exactly the code it ran before. ``Distributed`` holds the rank and offers the few collectives
training needs: ``wrap`` (DistributedDataParallel), ``average_running_statistics`` (batch norm),
``barrier``, ``sum``, ``broadcast`` (from rank 0),
``gather`` (one object from every rank); ``weights_digest`` hashes a network's state for sync checks.

What it does not: choose what each rank trains on, or which rank writes (``ppr.networks.training``,
``ppr.workflows.train``).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ppr.errors import PPRError
from ppr.networks.inference import resolve_device

# Collectives wait this long for the slowest rank (its share of preprocessing, rank 0's validation
# or bundle writing) before the run is declared hung; torchrun ends all ranks when one fails.
TIMEOUT = timedelta(minutes=120)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank (0 writes), local_rank (its GPU on the node), world_size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """The device this rank computes on: its own GPU (cuda:LOCAL_RANK) when ``device`` is CUDA."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        """``net`` in DistributedDataParallel (gradients averaged over ranks, rank 0's weights and
        buffers broadcast); ``net`` itself in a single process."""
        if not self.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def average_running_statistics(self, net: nn.Module) -> None:
        """Batch-norm running means and variances averaged over ranks (each rank updated them with
        its own batch), so that every rank holds the same buffers after a step; DDP would otherwise
        overwrite them with rank 0's at the next forward and the other ranks' batches would not count."""
        if not self.enabled:
            return
        buffers = [buffer for module in net.modules()
                   if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
                   for buffer in (module.running_mean, module.running_var) if buffer is not None]
        if not buffers:
            return
        flat = torch.cat([buffer.detach().reshape(-1).double() for buffer in buffers])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for buffer in buffers:
                buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()

    def barrier(self) -> None:
        if self.enabled:
            if torch.distributed.get_backend() == "nccl":
                torch.distributed.barrier(device_ids=[self.local_rank])
            else:
                torch.distributed.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """The sums over ranks of ``values`` (float64); the values themselves in a single process."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable)."""
        if not self.enabled:
            return value
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0, device=self._comm_device())
        return holder[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


SINGLE = Distributed()


def current() -> Distributed:
    """The run this process belongs to: SINGLE unless a process group is up."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    return Distributed(torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", "0")),
                       torch.distributed.get_world_size())


def world_size_from_env() -> int:
    """The number of processes the launcher started (1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@contextmanager
def session(device: str = "auto") -> Iterator[Distributed]:
    """Join the launcher's process group for the duration (gloo on the CPU, nccl on CUDA), or
    share the one already joined, or run as SINGLE without a launcher."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        yield current()
        return
    if world_size_from_env() == 1:
        yield SINGLE
        return
    if not torch.distributed.is_available():
        raise PPRError("This torch build has no torch.distributed: run one process (without torchrun).")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if resolve_device(device).type == "cuda":
        torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("nccl", timeout=TIMEOUT,
                                             device_id=torch.device("cuda", local_rank))
    else:
        torch.distributed.init_process_group("gloo", timeout=TIMEOUT)
    try:
        yield current()
    finally:
        torch.distributed.destroy_process_group()


def weights_digest(net: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``net`` (names and bytes): equal on ranks in sync."""
    digest = hashlib.sha256()
    for name, value in net.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
