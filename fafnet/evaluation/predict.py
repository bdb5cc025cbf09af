"""Segmenting query slices with support slices: the prediction code of the evaluation
(test.py) and of the inference command (segment.py), so both compute the same numbers.

A *run* is (support position, start, end): query slices start..end-1 segmented with support
slice `position` (1-way 1-shot), the queries of a run in batches of `batch_size` through
the model's `predict` (FAF-Net's encodes the support once per call). The evaluation's chunks are runs
(chunk i with support slice i); the inference command without a slice range makes a run of
every stretch of query slices that share a support slice.
"""
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from fafnet.runtime.devices import autocast, to_device_images

Run = Tuple[int, int, int]


def chunk_runs(chunks: Sequence[Tuple[int, int]]) -> List[Run]:
    """The runs of the evaluation's chunks: chunk i (start, end) with support slice i."""
    return [(part, start, end) for part, (start, end) in enumerate(chunks)]


@dataclass(frozen=True)
class InferenceOptions:
    """How `predict` runs: query slices per forward pass, channels-last inputs, bf16 autocast."""
    batch_size: int
    channels_last: bool
    amp_bf16: bool



@dataclass
class Timer:
    """Forward-pass time and slice count (evaluation throughput)."""
    seconds: float = 0.0
    slices: int = 0


def predict_runs(model, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor,
                 runs: Sequence[Run], device: torch.device, options: InferenceOptions,
                 timer: Optional[Timer] = None, bar=None) -> np.ndarray:
    """Foreground probabilities float32 [n, H, W] of the n query slices; slices in no run (and
    empty runs) stay 0.

    Args:
        model: a model of fafnet.models.interface, or a GraphedPredict of one (eval_graphs).
        support_images: [k, 3, H, W]; support_masks: [k, H, W] float (the support positions).
        query_images: [n, 3, H, W].
        runs: (support position, start, end), see the module docstring.
        bar: a progress bar (fafnet/io/progress.py) advanced by the slices of each run, or None.
    """
    height, width = query_images.shape[-2:]
    foreground = np.zeros((query_images.shape[0], height, width), dtype=np.float32)
    for position, start, end in runs:
        if end <= start:
            continue
        support = to_device_images(support_images[position:position + 1], device, options.channels_last)
        masks = support_masks[position:position + 1].to(device)
        queries = to_device_images(query_images[start:end], device, options.channels_last)
        began = time.perf_counter()
        with autocast(device, options.amp_bf16):
            probabilities = model.predict(support, masks, queries, batch_size=options.batch_size)
        foreground[start:end] = probabilities.float().cpu().numpy()
        if timer is not None:
            timer.seconds += time.perf_counter() - began   # .cpu() above waits for the device
            timer.slices += end - start
        if bar is not None:
            bar.update(end - start)
    return foreground
