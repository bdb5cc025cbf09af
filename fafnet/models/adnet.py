"""ADNet (Hansen et al., MedIA 2022; docs/protocol.md section 15) and its builder `adnet`
(registered as model "adnet").

One global foreground prototype from the support (masked average pooling of the support
features resized to the mask size, align_corners=False), scored against every query feature
pixel as S = -20 * cos(F_q, p), and one learned scalar threshold T (initially -10):
P = 1 - sigmoid(0.5 * (S - T)) at feature resolution, upsampled bilinearly (align_corners=True)
to the image. The encoder is torchvision's DeepLabV3-ResNet-101 backbone with a 2048 -> 256
reduction (`DeepLabResNet101Encoder`).

Losses (named, in the order the training step adds them):
- query_loss: NLL of log(clamp(P, eps, 1 - eps)) with class weights [0.1, 1.0] and ignore
  index 255 (weighted mean);
- align_loss: the query's hard prediction at feature resolution is a pseudo-mask; the query
  prototype under it segments each support with the same T; unweighted NLL of the support
  masks, summed over shots and divided by K * ways (ways = 1); 0 for a query whose
  pseudo-mask is empty; averaged over the queries;
- threshold_loss: t_loss_scaler * T / 20 (t_loss_scaler = 1).

The formula steps are module-level functions on plain tensors (`masked_average_prototype`,
`foreground_at_feature_resolution`, `upsample_foreground`, `clamped_nll_ignore`,
`alignment_loss`), so they can be checked without building a ResNet.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab_encoder import DeepLabResNet101Encoder, deeplab_feature_size
from .fafnet import default_predict_batch_size
from .interface import Losses
from .registry import register_model

SIMILARITY_SCALE = 20.0          # S = -20 * cosine similarity
THRESHOLD_SLOPE = 0.5            # P = 1 - sigmoid(0.5 * (S - T))
THRESHOLD_INIT = -10.0           # T's initial value
MASK_EPS = 1e-5                  # p = sum(F * M) / (sum(M) + 1e-5)
QUERY_CLASS_WEIGHTS = (0.1, 1.0)
IGNORE_INDEX = 255
T_LOSS_SCALER = 1.0              # threshold_loss = t_loss_scaler * T / 20
WAYS = 1                         # 1-way episodes: the alignment loss is divided by K * ways


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def masked_average_prototype(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Prototype of each feature map under its mask: the features resized bilinearly
    (align_corners=False) to the mask size (no resizing when the sizes agree), then
    p = sum(F * M) / (sum(M) + 1e-5).

    Args:
        features: [N, C, h, w]; masks: [N, H, W], values in [0, 1].
    Returns:
        prototypes [N, C].
    """
    if features.dim() != 4 or masks.dim() != 3 or features.shape[0] != masks.shape[0]:
        raise ValueError(f"masked_average_prototype needs features [N,C,h,w] and masks [N,H,W], "
                         f"got {tuple(features.shape)} and {tuple(masks.shape)}")
    if tuple(features.shape[-2:]) != tuple(masks.shape[-2:]):
        features = F.interpolate(features, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    masks = masks.unsqueeze(1).to(features.dtype)
    return (features * masks).sum(dim=(2, 3)) / (masks.sum(dim=(2, 3)) + MASK_EPS)


def foreground_at_feature_resolution(features: torch.Tensor, prototypes: torch.Tensor,
                                     threshold: torch.Tensor) -> torch.Tensor:
    """P = 1 - sigmoid(0.5 * (S - T)) with S = -20 * cos(F, p), on the feature grid.

    Args:
        features: [B, C, h, w]; prototypes: [B, C] (prototype b scores feature map b);
        threshold: the scalar T (any shape with one element).
    Returns:
        foreground probabilities [B, h, w].
    """
    similarity = F.cosine_similarity(features, prototypes.to(features.dtype)[..., None, None], dim=1)
    score = -SIMILARITY_SCALE * similarity
    return 1.0 - torch.sigmoid(THRESHOLD_SLOPE * (score - threshold.to(features.dtype).reshape(())))


def upsample_foreground(foreground: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[B, h, w] -> [B, H, W], bilinear with align_corners=True."""
    return F.interpolate(foreground.unsqueeze(1), size=tuple(size), mode="bilinear",
                         align_corners=True).squeeze(1)


def two_channel(foreground: torch.Tensor) -> torch.Tensor:
    """[B, H, W] foreground -> [B, 2, H, W] (background 1 - P, foreground P)."""
    return torch.stack([1.0 - foreground, foreground], dim=1)


def clamped_nll_ignore(probs: torch.Tensor, labels: torch.Tensor,
                       class_weights: Optional[Sequence[float]] = None,
                       ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """NLL of `labels` under `probs` clamped to [eps, 1 - eps] (eps: the float32 machine
    epsilon), pixels labelled `ignore_index` left out; with class weights the mean is weighted,
    sum(w_y * -log p_y) / sum(w_y) over the pixels kept.

    Args:
        probs: [N, 2, H, W] probabilities (background, foreground).
        labels: [N, H, W] integers in {0, 1, ignore_index}.
        reduction: "mean" (one scalar; NaN when every pixel is ignored, as PyTorch's) or
            "per_image" (unweighted only; [N]: each image's own mean, 0 for an image whose
            pixels are all ignored).
    """
    if probs.dim() != 4 or probs.shape[1] != 2 or labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"probs must be [N,2,H,W] and labels [N,H,W], got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    eps = torch.finfo(torch.float32).eps
    log_probs = _at_least_float32(probs).clamp(eps, 1.0 - eps).log()
    weight = (None if class_weights is None
              else torch.as_tensor(class_weights, dtype=log_probs.dtype, device=log_probs.device))
    labels = labels.long()
    if reduction == "mean":
        return F.nll_loss(log_probs, labels, weight=weight, ignore_index=ignore_index)
    if reduction != "per_image":
        raise ValueError(f"reduction must be 'mean' or 'per_image', got {reduction!r}")
    if weight is not None:
        raise ValueError("reduction='per_image' is unweighted")
    pixel_losses = F.nll_loss(log_probs, labels, ignore_index=ignore_index, reduction="none")
    kept = (labels != ignore_index).sum(dim=(1, 2))
    return pixel_losses.sum(dim=(1, 2)) / kept.clamp_min(1).to(log_probs.dtype)


def support_labels(support_masks: torch.Tensor) -> torch.Tensor:
    """Support masks -> NLL targets: 1 where the mask is 1, 0 where it is 0, ignored (255)
    elsewhere (as the reference builds them)."""
    labels = torch.full(support_masks.shape, IGNORE_INDEX, dtype=torch.long, device=support_masks.device)
    labels = torch.where(support_masks == 1, torch.ones_like(labels), labels)
    return torch.where(support_masks == 0, torch.zeros_like(labels), labels)


def alignment_loss(support_features: torch.Tensor, support_masks: torch.Tensor,
                   query_features: torch.Tensor, query_foreground: torch.Tensor,
                   threshold: torch.Tensor) -> torch.Tensor:
    """The alignment loss, averaged over the Q queries.

    For each query, its hard prediction at feature resolution (argmax of [1 - P, P], ties to
    background) is a pseudo-mask; the query prototype is the masked average of the query
    features under it (same grid, no resizing); it segments every support with the same T
    (upsampled, align_corners=True, to the mask size); the loss is the unweighted NLL of each
    support mask (its own mean), summed over the K shots and divided by K * ways.

    Branchless: a query whose pseudo-mask is empty contributes exactly 0, and exactly 0 to
    every gradient, through `torch.where` (its loss is finite: its prototype is
    0 / (0 + 1e-5) = 0 and the cosine similarity clamps the zero norm), so the step never
    waits for the device to learn whether a pseudo-mask is empty.

    Args:
        support_features: [K, C, h, w]; support_masks: [K, H, W];
        query_features: [Q, C, h, w]; query_foreground: [Q, h, w] (P at feature resolution);
        threshold: the scalar T.
    Returns:
        scalar loss (float32 or float64, as the features).
    """
    shots, channels = support_features.shape[:2]
    queries = query_features.shape[0]
    pseudo_masks = (two_channel(query_foreground).argmax(dim=1) == 1).to(query_features.dtype)   # [Q, h, w]
    has_foreground = pseudo_masks.flatten(1).any(dim=1)                                           # [Q]
    query_prototypes = masked_average_prototype(query_features, pseudo_masks)                     # [Q, C]
    # Every (query, shot) pair: support k scored against query q's prototype.
    pair_features = support_features.unsqueeze(0).expand(queries, -1, -1, -1, -1).reshape(
        queries * shots, channels, *support_features.shape[-2:])
    pair_prototypes = query_prototypes.unsqueeze(1).expand(-1, shots, -1).reshape(queries * shots, channels)
    foreground = upsample_foreground(foreground_at_feature_resolution(pair_features, pair_prototypes, threshold),
                                     support_masks.shape[-2:])
    labels = support_labels(support_masks).unsqueeze(0).expand(queries, -1, -1, -1).reshape(
        queries * shots, *support_masks.shape[-2:])
    per_pair = clamped_nll_ignore(two_channel(foreground), labels, reduction="per_image").view(queries, shots)
    per_query = per_pair.sum(dim=1) / (shots * WAYS)
    per_query = torch.where(has_foreground, per_query, per_query.new_zeros(()))
    return per_query.mean()


class ADNet(nn.Module):
    """ADNet: DeepLabV3-ResNet-101 features, one support prototype, -20 cos and a learned
    scalar threshold (docs/protocol.md section 15).

    Args:
        image_size: (H, W) of every input image.
        pretrained_weights: optional path to a torchvision ResNet-101 or DeepLabV3-ResNet-101
            state dict for the backbone.
        allow_partial_pretrained: accept a file that lacks some backbone tensors the encoder runs.
        zero_init_residual: every bottleneck's last BatchNorm weight at 0 (a random start).
    """

    def __init__(self, image_size: Tuple[int, int], pretrained_weights: Optional[str] = None,
                 allow_partial_pretrained: bool = False, zero_init_residual: bool = False):
        super().__init__()
        if len(tuple(image_size)) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}")
        self.image_size = tuple(int(side) for side in image_size)
        self.feature_size = deeplab_feature_size(*self.image_size)
        self.encoder = DeepLabResNet101Encoder(pretrained_weights, allow_partial_pretrained,
                                               zero_init_residual=zero_init_residual)
        self.threshold = nn.Parameter(torch.tensor(THRESHOLD_INIT))
        # Not in the state dict; a buffer so it follows the model to its device once.
        self.register_buffer("query_class_weights", torch.tensor(QUERY_CLASS_WEIGHTS, dtype=torch.float32),
                             persistent=False)

    # -- checks -----------------------------------------------------------------------------
    def _check_images(self, name: str, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
            raise ValueError(f"{name} must be [N,3,H,W] with N >= 1, got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"{name} are {tuple(images.shape[-2:])} but the model was built for "
                             f"image_size={self.image_size}")

    def _check_episode(self, support_images, support_masks, query_images) -> None:
        self._check_images("support_images", support_images)
        self._check_images("query_images", query_images)
        expected = (support_images.shape[0],) + self.image_size
        if tuple(support_masks.shape) != expected:
            raise ValueError(f"support_masks must be [K,H,W] = {expected}, got {tuple(support_masks.shape)}")

    # -- building blocks --------------------------------------------------------------------
    def support_prototype(self, support_features: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """Mean of the K per-shot prototypes: [K, C, h, w], [K, H, W] -> [1, C]."""
        return masked_average_prototype(support_features, support_masks).mean(dim=0, keepdim=True)

    def segment_queries(self, prototype: torch.Tensor, query_features: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """prototype [1, C], query features [Q, C, h, w] -> (P at feature resolution [Q, h, w],
        P upsampled to the image [Q, H, W])."""
        prototypes = prototype.expand(query_features.shape[0], -1)
        coarse = foreground_at_feature_resolution(query_features, prototypes, self.threshold)
        return coarse, upsample_foreground(coarse, self.image_size)

    # -- public API -------------------------------------------------------------------------
    def forward(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_images: torch.Tensor, query_labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Losses]:
        """One episode (the contract of fafnet.models.interface).

        Args:
            support_images: [K, 3, H, W]; support_masks: [K, H, W] in {0, 1};
            query_images: [Q, 3, H, W]; query_labels: [Q, H, W] integers in {0, 1} (255: ignored).
        Returns:
            probs [Q, 2, H, W] (background, foreground) and, with labels, the float32 losses
            {"query_loss", "align_loss", "threshold_loss"}, else {}.
        """
        self._check_episode(support_images, support_masks, query_images)
        if query_labels is not None and tuple(query_labels.shape) != (query_images.shape[0],) + self.image_size:
            raise ValueError(f"query_labels must be [Q,H,W] = {(query_images.shape[0],) + self.image_size}, "
                             f"got {tuple(query_labels.shape)}")
        shots = support_images.shape[0]
        # One encoder pass over [supports; queries]: in training BatchNorm shares batch statistics.
        features = self.encoder(torch.cat([support_images, query_images], dim=0))
        # The probability arithmetic in float32 (float64 stays), also under autocast.
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = _at_least_float32(features)
            support_features, query_features = features[:shots], features[shots:]
            prototype = self.support_prototype(support_features, support_masks)
            coarse, foreground = self.segment_queries(prototype, query_features)
            probs = two_channel(foreground)
            if query_labels is None:
                return probs, {}
            q_loss = clamped_nll_ignore(probs, query_labels, self.query_class_weights)
            a_loss = alignment_loss(support_features, support_masks, query_features, coarse, self.threshold)
            t_loss = T_LOSS_SCALER * self.threshold / SIMILARITY_SCALE
        return probs, {"query_loss": q_loss.float(), "align_loss": a_loss.float(),
                       "threshold_loss": t_loss.float()}

    def default_batch_size(self, device: torch.device) -> int:
        """Query slices per encoder pass in `predict` when none is given: 1 on the CPU, 8 on GPUs."""
        return default_predict_batch_size(device)

    def image_encoder(self) -> nn.Module:
        """The encoder (images -> features): the compile and graph target."""
        return self.encoder

    @property
    def pretrained_tensors_loaded(self) -> int:
        """Backbone tensors read from `pretrained_weights` (0 without a file)."""
        return self.encoder.pretrained_tensors_loaded

    @torch.no_grad()
    def predict(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_images: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """Inference: encodes the support once and the queries `batch_size` at a time
        (None: `default_batch_size` of the queries' device), in eval mode (the previous mode is
        restored afterwards).

        Returns:
            foreground probabilities [Q, H, W].
        """
        self._check_episode(support_images, support_masks, query_images)
        if batch_size is None:
            batch_size = self.default_batch_size(query_images.device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        was_training = self.training
        self.eval()
        try:
            support_features = self.encoder(support_images)
            with torch.autocast(device_type=support_features.device.type, enabled=False):
                prototype = self.support_prototype(_at_least_float32(support_features), support_masks)
            foregrounds = []
            for batch in query_images.split(batch_size):
                query_features = self.encoder(batch)
                with torch.autocast(device_type=query_features.device.type, enabled=False):
                    foregrounds.append(self.segment_queries(prototype, _at_least_float32(query_features))[1])
            return torch.cat(foregrounds)
        finally:
            self.train(was_training)


@register_model("adnet", description="ADNet (Hansen et al. 2022): DeepLabV3-ResNet-101 features (256 channels, "
                "output stride 8), one support prototype, -20 cos with a learned scalar threshold")
def adnet(image_size: Sequence[int], pretrained_weights: Optional[str] = None,
          allow_partial_pretrained: bool = False, *, zero_init_residual: bool = False) -> ADNet:
    """ADNet with the backbone from `pretrained_weights` (a path; None: torchvision's
    initialisation; a file missing backbone tensors is an error unless
    `allow_partial_pretrained`).

    Option: `zero_init_residual` (every bottleneck's last BatchNorm weight at 0, torchvision's
    option) for a random start. The default is ADNet's.
    """
    return ADNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights,
                 allow_partial_pretrained=allow_partial_pretrained, zero_init_residual=zero_init_residual)
