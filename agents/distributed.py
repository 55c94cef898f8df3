"""Data-parallel training on torch.distributed, started by `torchrun`.

    torchrun --nproc_per_node=4 -m textgym.cli train ...                      # one machine, 4 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m textgym.cli train ...             # on each of 2 machines

Each rank steps its own vector-env slots (its own seeds, so its own prompts), computes gradients on
its own episodes, and DistributedDataParallel all-reduces them; every rank then takes the same
optimizer step, so the weights stay identical. The losses are normalised by global counts, so N
ranks with B episodes each compute the gradient one process would on the N·B episodes. gloo on
CPU, nccl on CUDA. Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "setup", "context", "grad_sync"]


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank, world size, and reductions that are no-ops alone."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return float(t.item())

    def max(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def mean(self, value: float) -> float:
        return self.sum(value) / self.world_size

    def all_true(self, flag: bool) -> bool:
        return self.sum(0.0 if flag else 1.0) == 0.0

    def mean_dict(self, values: dict) -> dict:
        """Average every number in `values` over the ranks that have it; others stay rank 0's.

        Ranks may hold different keys (a rank whose verifier calls all failed has no
        `reward/<component>` entries), so the key sets are gathered first and every rank reduces
        the same sorted union: a sum and a count per key, in two collectives.
        """
        if not self.enabled:
            return values
        mine = [k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        keys = self.union(mine)
        device = _comm_device()
        sums = torch.tensor([float(values[k]) if k in mine else 0.0 for k in keys], dtype=torch.float64, device=device)
        counts = torch.tensor([1.0 if k in mine else 0.0 for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        out = dict(values)
        out.update({k: total / count for k, total, count in zip(keys, sums.tolist(), counts.tolist())})
        return out

    def union(self, names: list[str]) -> list[str]:
        """The sorted union of every rank's `names` (as UTF-8 bytes in tensors: no pickling)."""
        if not self.enabled:
            return sorted(set(names))
        device = _comm_device()
        data = torch.tensor(list(json.dumps(sorted(set(names))).encode()), dtype=torch.uint8, device=device)
        size = int(self.max(len(data)))
        padded = torch.zeros(size, dtype=torch.uint8, device=device)
        padded[: len(data)] = data
        gathered = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        union: set[str] = set()
        for t in gathered:
            union.update(json.loads(bytes(t.tolist()).rstrip(b"\0").decode()))
        return sorted(union)

    def all_reduce_grads(self, module: torch.nn.Module) -> None:
        """Sum the gradients of a module that is not wrapped in DDP (the small value head)."""
        if not self.enabled:
            return
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def setup() -> Context:
    """Join the torchrun job described by the environment (idempotent); alone, a 1-rank context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return context()


def context() -> Context:
    """The current job's context (a 1-rank one when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return Context(rank=dist.get_rank(), world_size=dist.get_world_size())
    return Context()


def grad_sync(ddp: torch.nn.parallel.DistributedDataParallel | None, enabled: bool) -> contextlib.AbstractContextManager:
    """Around a micro-batch's forward and backward: DDP all-reduces the gradients only when `enabled`
    (the last micro-batch); before that they accumulate locally (`no_sync`). A no-op without DDP."""
    return ddp.no_sync() if ddp is not None and not enabled else contextlib.nullcontext()
