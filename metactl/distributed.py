"""Data-parallel meta-training on torch.distributed (gloo on CPU, nccl on CUDA).

Launch with ``metactl meta-train --nproc N`` (torch.distributed's own elastic launcher, the
engine behind ``torchrun``), or with ``torchrun``/SLURM/TorchElastic directly: every worker reads
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment those launchers set.

Each rank takes a contiguous slice of the meta-batch (tasks keep their own seeds, see
:func:`metactl.data.episodes.training_tasks`), computes the mean meta-gradient of its slice, and the
gradients are averaged with one all-reduce, so every rank takes the identical outer step. Rank 0
alone logs, shows progress and writes the run dir. Collective calls have a bounded timeout, and a
peer that dies turns into a clear error on the others instead of a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from metactl.errors import MetactlError

TIMEOUT_SECONDS = float(os.environ.get("METACTL_DIST_TIMEOUT", "120"))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> range:
        """This rank's share of n tasks (n must divide evenly)."""
        per = n // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def _collective(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise MetactlError(
                f"Distributed training failed on rank {self.rank}: another worker stopped or is unreachable ({str(exc).splitlines()[0]}).",
                "Check the other workers' output; resume with --resume once all are healthy.",
            ) from None

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """In-place mean over ranks of equally shaped tensor lists (one flat all-reduce)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective(dist.all_reduce, flat)
        flat /= self.size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool, device: str = "cpu") -> bool:
        """True on every rank if it is True on any rank."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        self._collective(dist.all_reduce, t, dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        if self.size == 1:
            return
        for t in tensors:
            self._collective(dist.broadcast, t, 0)

    def barrier(self) -> None:
        if self.size > 1:
            self._collective(dist.barrier)


def init_from_env(device: str) -> World:
    """Join the process group the launcher described in the environment (or run alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_SECONDS))
        except (RuntimeError, ValueError) as exc:
            raise MetactlError(
                f"Cannot join the distributed job ({exc}).", "Launch with `metactl meta-train --nproc N` or torchrun; check MASTER_ADDR/PORT."
            ) from None
    return World(dist.get_rank(), dist.get_world_size())


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
