"""The ResNet-101 encoder of FAF-Net (docs/protocol.md section 2).

A torchvision ResNet-101 whose layer2 and layer3 are dilated instead of strided, so layer3's
output f3 (1024 channels) sits at 1/4 of the input resolution. Two 1x1 heads read f3:

- `reduce_features` (the release's `reduce1`): the 512-channel feature map F;
- `threshold_head` (the release's `down`, the Adaptive Threshold Learner): one threshold per
  feature pixel, T of shape [N, 1, h, w]. Not built with `threshold_head=False` (FAF-Net's
  `threshold="scalar"` ablation), where the encoder returns thresholds None.

layer4 and `reduce_layer4` (the release's `reduce2`) exist only so checkpoints keep their
shape; their output is never used, so they are not run (about 14% of the forward arithmetic).
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torchvision.models import resnet101

from .pretrained import load_pretrained_backbone

# The backbone modules the encoder runs: a pretrained file must fill all of them.
REQUIRED_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3")
FEATURE_CHANNELS = 512
LAYER3_CHANNELS = 1024
LAYER4_CHANNELS = 2048


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_size(height: int, width: int) -> Tuple[int, int]:
    """Spatial size (h, w) of the encoder's feature maps for an H x W input.

    Only conv1 (k7, s2, p3) and the max-pool (k3, s2, p1) change the size: layer1 has stride 1
    and layer2/layer3 are dilated. 257 -> 129 -> 65; 256 -> 128 -> 64.
    """
    sizes = []
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"image {name} must be a positive int, got {size!r}")
        after_conv1 = _conv_output_size(size, kernel=7, stride=2, padding=3)
        sizes.append(_conv_output_size(after_conv1, kernel=3, stride=2, padding=1))
    return sizes[0], sizes[1]


def image_sides_for_feature(side: int) -> range:
    """Every input side length whose feature map has `side` pixels (the inverse of
    `feature_size` per axis; 257..260 -> 65). Empty for side < 1."""
    if side < 1:
        return range(0)
    # feature_size is monotone in the input side, with steps of 4 input pixels per feature pixel.
    first = next(n for n in range(max(1, 4 * side - 8), 4 * side + 8) if feature_size(n, n)[0] == side)
    last = next(n for n in range(first + 4, first - 1, -1) if feature_size(n, n)[0] == side)
    return range(first, last + 1)


def _build_backbone() -> nn.Module:
    """torchvision ResNet-101 with layer2/layer3 dilated; its classifier is dropped."""
    backbone = resnet101(weights=None, replace_stride_with_dilation=[True, True, False])
    # fc is never used and carries 2M parameters; Identity keeps the module tree valid.
    backbone.fc = nn.Identity()
    return backbone


class ResNet101Encoder(nn.Module):
    """ResNet-101 up to layer3, with the feature (F) and threshold (T) heads.

    Args:
        pretrained_weights: optional path to a torchvision ResNet-101 or DeepLabV3-ResNet-101
            state dict; it overwrites the backbone after the initialisation.
        run_discarded_layers: also run layer4 and `reduce_layer4` and discard the result, as the
            authors' release does. Changes no output; only for benchmarks and parity checks.
        allow_partial_pretrained: accept a weights file that lacks some of the tensors of
            conv1, bn1 and layer1 to layer3 (they keep their initialisation); default: error.
        threshold_head: build the ATL head (False: no thresholds, see the module docstring).
    """

    def __init__(self, pretrained_weights: Optional[str] = None, run_discarded_layers: bool = False,
                 allow_partial_pretrained: bool = False, threshold_head: bool = True):
        super().__init__()
        self.backbone = _build_backbone()
        self.reduce_features = nn.Conv2d(LAYER3_CHANNELS, FEATURE_CHANNELS, kernel_size=1, bias=False)
        self.reduce_layer4 = nn.Conv2d(LAYER4_CHANNELS, FEATURE_CHANNELS, kernel_size=1, bias=False)
        self.threshold_head = nn.Sequential(
            nn.Conv2d(LAYER3_CHANNELS, FEATURE_CHANNELS, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(FEATURE_CHANNELS, 1, kernel_size=1, bias=False),
        ) if threshold_head else None
        self.run_discarded_layers = run_discarded_layers
        self.pretrained_tensors_loaded = 0
        self.reset_parameters()
        if pretrained_weights is not None:
            self.pretrained_tensors_loaded = load_pretrained_backbone(
                self.backbone, pretrained_weights, REQUIRED_MODULES, allow_partial=allow_partial_pretrained)

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, relu) for every conv, BatchNorm to weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def layer3_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> f3 [N, 1024, h, w]."""
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        return net.layer3(net.layer2(net.layer1(x)))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """images [N, 3, H, W] -> (features [N, 512, h, w], thresholds [N, 1, h, w] or None
        without a threshold head)."""
        f3 = self.layer3_features(images)
        if self.run_discarded_layers:
            self.reduce_layer4(self.backbone.layer4(f3))
        thresholds = self.threshold_head(f3) if self.threshold_head is not None else None
        return self.reduce_features(f3), thresholds
