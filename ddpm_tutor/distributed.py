"""Data-parallel training under torchrun: the process group, each process's device and its share of a batch.

``torchrun --nproc_per_node=N -m ddpm_tutor train ...`` (with ``--nnodes/--node-rank/--rdzv-endpoint`` across
machines) starts N processes and gives each WORLD_SIZE, RANK and LOCAL_RANK in its environment. Each process
trains a replica of the model on its share of every batch; DistributedDataParallel averages their gradients, so
the replicas stay equal. Without those variables nothing here does anything; under torchrun even one process
joins a process group (so that `--nproc_per_node=1` runs the code path of N processes).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import default_device


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of a run."""

    rank: int = 0  # this process's index among all of them (0 writes the checkpoints and the log)
    size: int = 1  # processes in the run (torchrun's WORLD_SIZE)
    local_rank: int = 0  # its index on this machine: the GPU it takes
    launched: bool = False  # started by torchrun: it joins a process group even alone (nccl/DDP run as with N)

    @property
    def main(self) -> bool:
        """Whether this process writes files and shows the progress bar."""
        return self.rank == 0


def _env_int(environ, name: str, default: int) -> int:
    text = environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"the environment variable {name} must be an integer (torchrun sets it), got {text!r}"
        ) from None


def world_from_env(environ=None) -> World:
    """The World that torchrun's WORLD_SIZE, RANK and LOCAL_RANK describe (one process when they are unset)."""
    environ = os.environ if environ is None else environ
    size = _env_int(environ, "WORLD_SIZE", 1)
    rank, local_rank = _env_int(environ, "RANK", 0), _env_int(environ, "LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(
            f"torchrun's environment is inconsistent: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local_rank}"
        )
    return World(rank, size, local_rank, launched="WORLD_SIZE" in environ)


def current() -> World:
    """The World of the process group this process joined (one process when it joined none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), _env_int(os.environ, "LOCAL_RANK", 0), launched=True)


def device_for(world: World, requested: str | None) -> torch.device:
    """The device of this process: ``requested`` (None: CUDA when there is one, else the CPU); under torchrun
    "cuda" means cuda:LOCAL_RANK, one GPU per process."""
    if requested is None:
        requested = default_device().type
    device = torch.device(requested)
    if not world.launched or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"--device {requested} under torchrun: each process takes the GPU cuda:LOCAL_RANK; pass --device cuda "
            f"or leave it out"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process {world.rank} has LOCAL_RANK {world.local_rank}, but this machine has "
            f"{torch.cuda.device_count()} GPUs: start at most that many processes per machine (--nproc_per_node)"
        )
    return torch.device("cuda", world.local_rank)


def init(world: World, device: torch.device) -> None:
    """Join the run's process group (nccl between GPUs, gloo between CPUs); nothing for one process."""
    if not world.launched or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def destroy() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait until every process gets here (nothing for one process)."""
    if world.size > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World):
    """Run the block on rank 0 first, then on the others: a download into a shared folder happens once."""
    if not world.main:
        barrier(world)
    yield
    if world.main:
        barrier(world)


def share(batch_size: int, world: World) -> slice:
    """This process's contiguous share of a global batch of ``batch_size`` examples (all of it for one process).

    Every process draws the same global batch and keeps its share: the shares are disjoint and cover the batch
    (DistributedSampler's role), and a run does not depend on how many processes train it."""
    if batch_size % world.size:
        raise ValueError(
            f"batch_size {batch_size} must be divisible by the number of processes {world.size}: each takes an "
            f"equal share of every batch (e.g. --batch-size {batch_size - batch_size % world.size or world.size})"
        )
    n = batch_size // world.size
    return slice(world.rank * n, (world.rank + 1) * n)


def mean_over_processes(x: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``x`` over the processes (x itself for one process): a collective, every process calls it."""
    if world.size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)  # a sum: gloo has no average
    return x / world.size
