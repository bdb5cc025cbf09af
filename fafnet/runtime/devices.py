"""Choosing the device from the config and moving image batches to it."""
import os
from typing import Optional

import torch

from fafnet.models.fafnet import default_predict_batch_size

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; 'cpu', 'cuda', 'cuda:N' and 'mps' are taken
    as given but must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA, but torch sees no CUDA device")
    if device.type == "mps" and not mps_available():
        raise ValueError(f"device={name!r} asked for MPS, but it is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r}: only {DEVICE_CHOICES} are supported")
    return device


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_type(name: str) -> str:
    """The device type 'cpu', 'cuda' or 'mps' that `name` resolves to, without raising (an
    unavailable device counts as what it names); used for config defaults."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    return str(name).split(":")[0]


def default_eval_batch_size(name: str) -> int:
    """Query slices per forward pass in evaluation on the device `name` resolves to: 1 on a
    CPU (larger batches spill layer3's activations out of cache there), 8 on a GPU
    (fafnet.models.fafnet.default_predict_batch_size)."""
    return default_predict_batch_size(torch.device(device_type(name)))


def default_eval_channels_last(name: str) -> bool:
    """Channels-last inputs in evaluation: on for the CPU, off for GPUs (the faster of the two on
    each, README benchmarks)."""
    return device_type(name) == "cpu"


def default_num_workers(cpu_count: Optional[int] = None) -> int:
    """Data-loading worker processes: one core stays with the training process, at most 4
    workers (an episode takes about 2 ms to build, so 4 keep up with any GPU step); 0 (load in
    the main process) on a single core."""
    if cpu_count is None:
        # The cores this process may run on (a container or a batch job may grant fewer than
        # the machine has).
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cpu_count or 1
    return max(0, min(4, cores - 1))


def to_device_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move an image batch [N, 3, H, W] to `device`, channels-last if asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def autocast(device: torch.device, amp_bf16: bool):
    """bf16 autocast on `device` when `amp_bf16`, else a no-op context. The model keeps its
    FFT and probability arithmetic in float32 itself."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_bf16)
