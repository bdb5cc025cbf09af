"""The contract between a few-shot segmentation model and the rest of the package.

Training, evaluation, segmentation, snapshots and benchmarks know a model only through this
contract; everything else about it is its own. A model is an `nn.Module` with:

- ``forward(support_images, support_masks, query_images, query_labels=None)`` for one
  1-way K-shot episode: support_images [K, 3, H, W], support_masks [K, H, W] in {0, 1},
  query_images [Q, 3, H, W], query_labels [Q, H, W] integers in {0, 1} (checked by the caller,
  `check_query_labels`). Returns ``(probs, losses)``: probs [Q, 2, H, W] (background,
  foreground) and a dict of named float32 scalar losses, empty without labels. The training
  step minimises their sum, added in the dict's order, and logs and plots each by its name.
- ``predict(support_images, support_masks, query_images, batch_size=None)`` -> foreground
  probabilities [Q, H, W], in eval mode, without gradients: what evaluation and `segment` run.
- ``image_encoder()`` -> the sub-module every image passes through, or None: the target of
  ``compile="encoder"`` and of the evaluation's encoder graphs (it returns a tensor or a tuple
  of tensors and Nones).
- optionally ``default_batch_size(device)`` (int): query slices per forward pass of `predict`
  when the evaluation's `eval_batch_size` is None (without it: 1).
- optionally ``pretrained_tensors_loaded`` (int): backbone tensors read from a pretrained file.
- optionally ``counters()`` -> {name: int}: events the model counts (SSL-ALPNet: episodes whose
  classes had no prototype); training logs them and records them in the run's info, evaluation
  in results.json (`model_counters`).

A model is chosen by name from `fafnet.models.registry`, where its builder registers.
"""
from typing import Dict, Optional

import torch
from torch import nn

Losses = Dict[str, torch.Tensor]


def check_query_labels(labels: torch.Tensor) -> None:
    """Raises ValueError unless `labels` is an integer tensor of 0s and 1s.

    On a GPU tensor the range check waits for the device; a training step that must not
    wait checks the labels on the CPU before copying them (fafnet.training.step).
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"query labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() > 1):
        raise ValueError("query labels must be 0 (background) or 1 (foreground)")


def total_loss(losses: Losses) -> torch.Tensor:
    """The sum of the named losses, added in the dict's order (so the rounding is fixed)."""
    if not losses:
        raise ValueError("the model returned no losses for a training episode")
    values = iter(losses.values())
    total = next(values)
    for value in values:
        total = total + value
    return total


def predict_batch_size(model: nn.Module, device: torch.device, requested: Optional[int] = None) -> int:
    """`requested`, else the model's `default_batch_size(device)`, else 1."""
    if requested is not None:
        return int(requested)
    method = getattr(model, "default_batch_size", None)
    return int(method(torch.device(device))) if callable(method) else 1


def model_counters(model: nn.Module) -> Dict[str, int]:
    """The model's `counters()`, or {} when it counts nothing."""
    method = getattr(model, "counters", None)
    return dict(method()) if callable(method) else {}


def image_encoder(model: nn.Module) -> Optional[nn.Module]:
    """The model's `image_encoder()`, or None when it declares none."""
    method = getattr(model, "image_encoder", None)
    return method() if callable(method) else None
