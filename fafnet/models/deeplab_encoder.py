"""The encoder of ADNet and SSL-ALPNet (docs/protocol.md sections 15 and 16): torchvision's
DeepLabV3-ResNet-101 backbone without its ASPP head, then a 1 x 1 convolution to 256 channels.

The backbone is a ResNet-101 whose layer3 and layer4 are dilated instead of strided
(`replace_stride_with_dilation=[False, True, True]`): output stride 8, layer4's 2048 channels
(256 x 256 -> 32 x 32 features). Its initialisation is torchvision's ResNet's (kaiming-normal
fan-out convolutions, BatchNorm weight 1 and bias 0); the reduction convolution keeps
PyTorch's default initialisation. Pretrained weights (the ImageNet ResNet-101 or the COCO
DeepLabV3 file, as for FAF-Net) overwrite the backbone and must fill every module it runs.
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torchvision.models import resnet101

from .pretrained import load_pretrained_backbone

LAYER4_CHANNELS = 2048
FEATURE_CHANNELS = 256
# The backbone modules the encoder runs: a pretrained file must fill all of them.
REQUIRED_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def deeplab_feature_size(height: int, width: int) -> Tuple[int, int]:
    """(h, w) of the features for an H x W input: conv1 (k7, s2, p3), the max-pool (k3, s2, p1)
    and layer2's stride-2 convolution (k3, s2, p1; layer3 and layer4 are dilated).
    256 -> 128 -> 64 -> 32; 257 -> 129 -> 65 -> 33; 128 -> 16."""
    sizes = []
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"image {name} must be a positive int, got {size!r}")
        size = _conv_output_size(size, kernel=7, stride=2, padding=3)
        size = _conv_output_size(size, kernel=3, stride=2, padding=1)
        sizes.append(_conv_output_size(size, kernel=3, stride=2, padding=1))
    return sizes[0], sizes[1]


class DeepLabResNet101Encoder(nn.Module):
    """ResNet-101 (output stride 8) up to layer4, then Conv2d(2048, 256, 1 x 1, no bias).

    Args:
        pretrained_weights: optional path to a torchvision ResNet-101 or DeepLabV3-ResNet-101
            state dict; it overwrites the backbone after the initialisation.
        allow_partial_pretrained: accept a file that lacks some of the backbone tensors the
            encoder runs (they keep their initialisation); default: an error listing them.
        zero_init_residual: every bottleneck's last BatchNorm weight at 0 (torchvision's
            option), for a random start.
    """

    def __init__(self, pretrained_weights: Optional[str] = None, allow_partial_pretrained: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        self.backbone = resnet101(weights=None, replace_stride_with_dilation=[False, True, True],
                                  zero_init_residual=zero_init_residual)
        # fc is never used and carries 2M parameters; Identity keeps the module tree valid.
        self.backbone.fc = nn.Identity()
        self.reduce = nn.Conv2d(LAYER4_CHANNELS, FEATURE_CHANNELS, kernel_size=1, bias=False)
        self.pretrained_tensors_loaded = 0
        if pretrained_weights is not None:
            self.pretrained_tensors_loaded = load_pretrained_backbone(
                self.backbone, pretrained_weights, REQUIRED_MODULES, allow_partial=allow_partial_pretrained)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> features [N, 256, h, w] (h, w: `deeplab_feature_size`)."""
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return self.reduce(x)
