"""Choosing the device and the CPU threads from the config, and moving image batches to it."""
from typing import Optional

import torch

from fafnet.runtime.options import DEVICE_CHOICES


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


def eval_channels_last(option: Optional[bool], device: torch.device) -> bool:
    """The evaluation's channels-last layout: `option`, or by default on for a CPU and off for
    GPUs (the faster of the two on each, docs/benchmarks.md)."""
    return device.type == "cpu" if option is None else bool(option)


def configure_threads(num_threads: Optional[int]) -> int:
    """Set torch's CPU threads of this process to `num_threads` (None: leave torch's default);
    returns the number in use (recorded with the run)."""
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()


def to_device_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move an image batch [N, 3, H, W] to `device`, channels-last if asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def autocast(device: torch.device, amp_bf16: bool):
    """bf16 autocast on `device` when `amp_bf16`, else a no-op context. The model keeps its
    FFT and probability arithmetic in float32 itself."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_bf16)
