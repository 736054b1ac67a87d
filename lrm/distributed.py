"""torch.distributed helpers for rank-sharded work launched with torchrun.

Without torchrun (no WORLD_SIZE in the environment) everything degrades to one process:
rank 0 of 1, and `barrier` does nothing. Under torchrun, `init_from_env` opens the process
group from the variables torchrun sets: nccl when the work runs on CUDA (one GPU per process),
gloo when it runs on the CPU, also on a machine that has GPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group if open, else $RANK, else 0."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes: from the process group if open, else $WORLD_SIZE, else 1."""
    if is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Open the process group when launched by torchrun with more than one process, for work on
    `device`: nccl with process LOCAL_RANK on GPU LOCAL_RANK for CUDA, gloo for the CPU.

    Returns True when this call opened it (the caller then closes it with `shutdown`).
    """
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun "
            "(e.g. torchrun --nproc_per_node 2 -m lrm.cli.app ...)"
        )
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise RuntimeError(f"process {local_rank} of this machine has no GPU of its own ({gpus} visible); "
                               f"launch at most {gpus} processes per machine on CUDA, or run on --device cpu")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (picklable objects); [obj] in a single process."""
    if world_size() <= 1 or not is_initialized():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def group_size() -> int:
    """Processes in the open process group; 1 when none is open (also under torchrun before init_from_env).
    Work that averages over ranks splits its batches by this, not by $WORLD_SIZE."""
    return dist.get_world_size() if is_initialized() else 1


def sum_over_ranks(value: int) -> int:
    """The sum of every rank's `value` (a count), on every rank; `value` in a single process."""
    return sum(gather_objects(int(value)))


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def owned(indices: range | list[int], rank_: int | None = None, world: int | None = None) -> list[int]:
    """The items of `indices` this rank processes: item % world_size == rank (disjoint, covering)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return [i for i in indices if i % world == rank_]


def process_device(device: str | torch.device) -> torch.device:
    """The device this process works on: `device`, except CUDA under torchrun with more than one process,
    where process LOCAL_RANK takes GPU LOCAL_RANK (as init_from_env set it)."""
    device = torch.device(device)
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def local_slice(global_size: int, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's share of a global batch of `global_size` items: rank r takes [r * b, (r + 1) * b) with
    b = global_size / world (ValueError unless it splits evenly)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if global_size % world:
        raise ValueError(f"a global batch of {global_size} does not split evenly over {world} processes; "
                         f"pass a batch size that is a multiple of {world}")
    local = global_size // world
    return slice(rank_ * local, (rank_ + 1) * local)


def collective_device() -> torch.device:
    """Where small tensors for collectives must live: the current GPU under nccl (it reduces CUDA tensors
    only), else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
