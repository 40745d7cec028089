"""The device policy: which device a run uses, and the batch size and decoding workers that suit it."""

from __future__ import annotations

import os
import sys

from common.errors import CnnfeatError

from .remote import REMOTE_REQUESTS


def resolve_device(device: str) -> str:
    """`auto` = CUDA when this machine has it, else the CPU; a CUDA device this machine lacks is refused."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise CnnfeatError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def run_device(device: str, ray: str | None) -> str:
    """The device of an extraction run from this process (`ray` None), or on a Ray cluster, whose
    actors have the devices: `auto` there is the CPU unless asked, and this machine's CUDA is not checked."""
    if not ray:
        return resolve_device(device)
    return "cpu" if device == "auto" else device


def cuda_available() -> bool:
    # Linux without NVIDIA's device nodes has no CUDA: answer without importing torch (seconds),
    # so an "up to date" run stays instant.
    if sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_batch_size(device: str) -> int:
    # On 2 CPU cores small batches are faster (they stay in cache); GPUs want large ones.
    return 128 if device.startswith("cuda") else 16


def default_workers(engine: str = "torch", remote: bool = False) -> int:
    """Decoding workers: threads beside onnxruntime, one per core (onnxruntime's own threads sleep
    when idle, so the two share the cores: benchmarks/extract_throughput.py --choices), or
    REMOTE_REQUESTS when each image is first fetched from an object store (more requests in flight
    hide the store's latency: benchmarks/remote_read.py); worker processes beside torch (one core
    left to the forward pass)."""
    cores = usable_cores()
    if engine == "onnxruntime":
        return max(REMOTE_REQUESTS, min(8, cores)) if remote else min(8, cores)
    return min(8, max(1, cores - 1))
