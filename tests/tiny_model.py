"""A second model for the registry tests: a two-convolution prototype network with one option
of its own, `width` (the convolutions' channels).

It follows fafnet.models.interface and nothing else: the training step, logs, curves,
snapshots, evaluation and segmentation must run it without knowing it. Importing this module
registers it as model "tiny" (the decorator below is the only line the registry needs);
tests/test_model_registry.py imports it.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fafnet.models import clamped_nll, masked_average_pooling, register_model

NAME = "tiny"


class TinyPrototypeNet(nn.Module):
    """Features from two 3 x 3 convolutions of `width` channels; the foreground probability
    of a query pixel is sigmoid(scale * cos(feature, support prototype) + bias).

    Args:
        image_size: (H, W) of every input image.
        width: channels of both convolutions.
    """

    def __init__(self, image_size: Tuple[int, int], width: int = 8):
        super().__init__()
        self.image_size = tuple(image_size)
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, padding=1))
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def _foreground(self, support_images, support_masks, query_images) -> torch.Tensor:
        """[K,3,H,W], [K,H,W], [Q,3,H,W] -> foreground probabilities [Q, H, W]."""
        prototype = masked_average_pooling(self.encoder(support_images), support_masks).mean(0, keepdim=True)
        similarity = F.cosine_similarity(self.encoder(query_images), prototype[..., None, None], dim=1)
        return torch.sigmoid(self.scale * similarity + self.bias)

    def forward(self, support_images, support_masks, query_images,
                query_labels: Optional[torch.Tensor] = None):
        """(probs [Q, 2, H, W], {"query_loss", "scale_loss"} with labels, else {})."""
        foreground = self._foreground(support_images, support_masks, query_images)
        probs = torch.stack([1.0 - foreground, foreground], dim=1)
        if query_labels is None:
            return probs, {}
        return probs, {"query_loss": clamped_nll(probs, query_labels),
                       "scale_loss": 1e-3 * self.scale.square()}

    @torch.no_grad()
    def predict(self, support_images, support_masks, query_images, batch_size: Optional[int] = None):
        """Foreground probabilities [Q, H, W] in eval mode (one pass: the model is small)."""
        was_training = self.training
        self.eval()
        try:
            return self._foreground(support_images, support_masks, query_images)
        finally:
            self.train(was_training)


@register_model(NAME, description="two convolutions and a cosine prototype (tests only)")
def tiny(image_size, pretrained_weights=None, allow_partial_pretrained=False, *, width: int = 8) -> TinyPrototypeNet:
    if pretrained_weights is not None:
        raise ValueError("the tiny model has no pretrained weights")
    if width < 1:
        raise ValueError(f"config option model_options.width={width} must be at least 1")
    return TinyPrototypeNet(image_size, width)
