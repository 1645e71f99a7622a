"""Training on several processes: `torchrun` and DistributedDataParallel.

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT) fp32
training and QAT join one process group (gloo on the CPU, nccl on CUDA), wrap the model
in `DistributedDataParallel` and read their shard of each global batch. Without
torchrun nothing changes: one process, no process group. Rank 0 writes the files and
prints; the other ranks compute and keep quiet.

`Execution` says how a run is executed (device, loader workers), never what it
computes: the recipe is `TrainConfig`'s, and the same seed gives the same global
batches on any number of processes (`edgecnn.data.loader.train_loader`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from edgecnn.errors import EdgecnnError, ParameterError

DEVICES = ("auto", "cpu", "cuda")
#: DataLoader workers per process at most, when image files are decoded.
MAX_WORKERS = 4


@dataclass(frozen=True)
class Execution:
    """Where and how a training run executes.

    device: "auto" (CUDA when `torch.cuda.is_available()`, else the CPU), "cpu" or
    "cuda" (under torchrun: the GPU of the process's LOCAL_RANK).
    workers: DataLoader worker processes per training process that decode and
    preprocess (0: in the training process); None: `default_workers`.
    """

    device: str = "auto"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ParameterError("device", f"must be one of {', '.join(DEVICES)}, got "
                                           f"{self.device!r}")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or not 0 <= self.workers <= 64):
            raise ParameterError("workers", f"must be in [0, 64], got {self.workers!r}")


def launched() -> bool:
    """True in a process started by torchrun (or any launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True once this process is in a process group (after `setup` under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group, else torchrun's RANK, else 0."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if active():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    """Rank 0 (and every process not under torchrun): the one that writes and prints."""
    return rank() == 0


def resolve_device(device: str) -> torch.device:
    """"auto" | "cpu" | "cuda" -> a torch.device (cuda:LOCAL_RANK under torchrun).

    Raises `ParameterError` ("device") for "cuda" when torch sees no CUDA device.
    """
    Execution(device=device)  # validates the name
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParameterError("device", "cuda: torch sees no CUDA device (this torch build "
                                       f"{torch.__version__} or the machine has none)")
    index = int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0
    if index >= torch.cuda.device_count():
        raise ParameterError("device", f"cuda: LOCAL_RANK {index} but only "
                                       f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def setup(device: str = "auto") -> torch.device:
    """The device to train on; under torchrun, joins the process group first (once):
    backend nccl for CUDA, gloo for the CPU. Raises `EdgecnnError` when the group
    cannot be formed."""
    target = resolve_device(device)
    if launched() and not active():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        backend = "nccl" if target.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise EdgecnnError(f"torchrun: cannot form the {backend} process group "
                               f"(RANK {os.environ.get('RANK')}, WORLD_SIZE "
                               f"{os.environ.get('WORLD_SIZE')}): {exc}") from None
    elif active():
        expected = "nccl" if target.type == "cuda" else "gloo"
        if dist.get_backend() != expected:
            raise ParameterError("device", f"{target.type} needs the {expected} backend, but "
                                           f"the process group uses {dist.get_backend()}")
    return target


def shutdown() -> None:
    """Leave the process group (no-op outside torchrun)."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if active() and dist.get_world_size() > 1:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself in one process; DistributedDataParallel over it in a group (its
    buffers, BN statistics and the QAT observers' ranges, broadcast from rank 0 at every
    forward)."""
    if not active() or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # a size-1 kernel's gradient comes contiguous where the channels-last parameter's
    # bucket view has other (equivalent) strides: a performance note, not an error
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=True)


def sync_buffers(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers (each rank's last forward updated its own BN
    statistics and observer ranges): the model every rank evaluates is the one rank 0
    writes."""
    if not active() or dist.get_world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def all_reduce_sums(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over every rank (the values themselves in one
    process)."""
    if not active() or dist.get_world_size() == 1:
        return list(values)
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def per_rank_batch(batch_size: int) -> int:
    """The share of a global batch each rank reads: `batch_size` / world size.

    Raises `ParameterError` ("batch_size") when the processes cannot split it evenly.
    """
    size = world_size()
    if batch_size % size:
        raise ParameterError("batch_size", f"{batch_size} is the global batch; it must be a "
                                           f"multiple of the {size} torchrun processes")
    return batch_size // size


def default_workers(images) -> int:
    """Loader workers when none are asked for: 0 for images already in memory (an
    array: nothing to decode), else half this process's share of the usable cores, at
    most `MAX_WORKERS` (training itself runs on the rest)."""
    import numpy as np

    if isinstance(images, (np.ndarray, torch.Tensor)):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1
    return max(0, min(MAX_WORKERS, cores // max(1, local) // 2))
