"""Initialisation helpers that several models' builders share."""
import torch
from torchvision.models.resnet import Bottleneck


def zero_init_residual(model: torch.nn.Module) -> int:
    """Set the last BatchNorm weight of every ResNet bottleneck to 0, so each residual block
    starts as the identity (torchvision's `zero_init_residual`). For a random start only (the
    model option `zero_init_residual`; the papers start from pretrained weights): without it
    the residual stream grows through layer3 and training collapses to empty predictions
    (docs/real_data.md). Returns the number of blocks changed."""
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    with torch.no_grad():
        for block in blocks:
            block.bn3.weight.zero_()
    return len(blocks)
