"""Building the network the experiments use, and the random-start options of the demo."""
from typing import Optional, Sequence

import torch
from torchvision.models.resnet import Bottleneck

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


def zero_init_residual(model: torch.nn.Module) -> int:
    """Set the last BatchNorm weight of every ResNet bottleneck to 0, so each residual block
    starts as the identity (torchvision's `zero_init_residual`; Goyal et al. 2017). For a
    random start only (the option `zero_init_residual`; not in the release, which starts from
    pretrained weights): with the release's initialisation alone the residual stream grows
    through layer3's 23 blocks (feature std ~9, threshold map std ~120 at 65 x 65), the
    prediction is saturated and the prototype loss (~12) outweighs the query loss, so training
    drives the query prediction to empty, where the alignment and prototype losses are 0.
    Returns the number of blocks changed."""
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    with torch.no_grad():
        for block in blocks:
            block.bn3.weight.zero_()
    return len(blocks)


def scale_threshold_head(model: torch.nn.Module, factor: float) -> None:
    """Multiply the initial weights of the threshold head's output conv (512 -> 1) by `factor`
    (the option `threshold_head_init_scale`; 1.0 is the release).

    The release's kaiming fan_out initialisation gives that conv (fan out 1) weights of std
    1.41, so the threshold map T starts with a spread of tens while the similarity term
    -20 cos spans [-20, 20]: the prediction is decided by T alone. Adam moves each weight by
    about lr per step, so in a run of a few hundred steps T keeps that scale; 0.05 starts it
    at std ~1 and lets the similarity steer the prediction from the first step."""
    with torch.no_grad():
        model.encoder.threshold_head[-1].weight.mul_(factor)
