"""Building the network the experiments use."""
from typing import Optional, Sequence

import torch

from .fafnet import FAFNet

NO_PRETRAINED = "none"   # the config's explicit "random initialisation"


def build_model(image_size: Sequence[int], device: torch.device, pretrained_weights: Optional[str] = None,
                channels_last: bool = False, allow_partial_pretrained: bool = False) -> FAFNet:
    """FAFNet on `device`, with the backbone from `pretrained_weights` (a path; None or
    "none": the encoder's own initialisation; a file missing backbone tensors is an error
    unless `allow_partial_pretrained`), optionally with channels-last weights (convolutions
    then run in NHWC)."""
    if pretrained_weights == NO_PRETRAINED:
        pretrained_weights = None
    model = FAFNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights,
                   allow_partial_pretrained=allow_partial_pretrained).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
