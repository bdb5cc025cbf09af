"""Building FAF-Net for the registry (fafnet.models.registry), with its random-start options."""
from typing import Mapping, Optional, Sequence

import torch
from torchvision.models.resnet import Bottleneck

from .fafnet import FAFNet

# FAF-Net's own options and the values that reproduce the release (the registry checks that
# another model is not given them).
FAFNET_OPTIONS = {"zero_init_residual": False, "threshold_head_init_scale": 1.0}


def build_fafnet(image_size: Sequence[int], pretrained_weights: Optional[str] = None,
                 allow_partial_pretrained: bool = False, options: Optional[Mapping] = None) -> FAFNet:
    """FAFNet with the backbone from `pretrained_weights` (a path; None: the encoder's own
    initialisation; a file missing backbone tensors is an error unless
    `allow_partial_pretrained`), then the random-start `options` of FAFNET_OPTIONS (missing
    ones take the release's value)."""
    options = {**FAFNET_OPTIONS, **(options or {})}
    model = FAFNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights,
                   allow_partial_pretrained=allow_partial_pretrained)
    if options["zero_init_residual"]:
        zero_init_residual(model)
    if options["threshold_head_init_scale"] != 1.0:
        scale_threshold_head(model, options["threshold_head_init_scale"])
    return model


def zero_init_residual(model: torch.nn.Module) -> int:
    """Set the last BatchNorm weight of every ResNet bottleneck to 0, so each residual block
    starts as the identity (torchvision's `zero_init_residual`). For a random start only (the
    option `zero_init_residual`; the release starts from pretrained weights): without it the
    residual stream grows through layer3 and training collapses to empty predictions (README,
    the demo's options). Returns the number of blocks changed."""
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    with torch.no_grad():
        for block in blocks:
            block.bn3.weight.zero_()
    return len(blocks)


def scale_threshold_head(model: torch.nn.Module, factor: float) -> None:
    """Multiply the initial weights of the threshold head's output conv (512 -> 1) by `factor`
    (the option `threshold_head_init_scale`; 1.0 is the release). A random start needs a small
    factor: the release's initialisation makes the threshold map, not the similarity, decide
    the first predictions (README, the demo's options)."""
    with torch.no_grad():
        model.encoder.threshold_head[-1].weight.mul_(factor)
