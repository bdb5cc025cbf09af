"""SSL-ALPNet (Ouyang et al., ECCV 2020), the local-prototype baseline (docs/protocol.md
section 16), and its builder `ssl_alpnet` (registered as model "ssl_alpnet").

The encoder is ADNet's (section 15, `DeepLabResNet101Encoder`: 256 channels at output
stride 8). Every class is scored at feature resolution h x w against a set of prototypes:

- support masks (foreground M and background 1 - M) are resized bilinearly
  (align_corners=False) to h x w;
- local prototypes: the support features and the resized mask are average-pooled with one
  window (stride = window); a window's pooled feature is a prototype of the class when its
  pooled mask is > 0.95. The window (`prototype_window`):
    * training mode: (h // 8) x (w // 8), i.e. a fixed grid of 8 x 8 windows whatever the
      feature size (4 x 4 windows at 32 x 32 features, 256 x 256 images; at 33 x 33
      features, 257 x 257 images, also 4 x 4, and the last row and column, which no whole
      window covers, are left out, as PyTorch's pooling floors);
    * evaluation mode: a fixed 2 x 2 window, so the number of windows grows with the feature
      size ((h // 2) x (w // 2): 16 x 16 = 256 windows per shot at 32 x 32, a grid twice as
      fine as training's there);
    * on feature maps smaller than the window (images below about 64 pixels, i.e. tests) the
      window is clipped to between 1 and the feature size, so every size runs.
- background: its local prototypes only. Foreground: when some 4 x 4 window (stride 4) of the
  resized foreground mask averages >= 0.95 (`has_full_foreground_window`; window 4 in
  training and evaluation alike), its local prototypes plus one global prototype per shot
  (masked average of the features under the resized mask, eps 1e-5); otherwise the mean of
  the shots' global prototypes alone, scored by 20 * cosine similarity.
- the score of a class with prototypes p_k at a query pixel q: with q and p_k L2-normalised
  (norms floored at 1e-4), d_k = 20 <q, p_k> and score = sum_k softmax_k(d) d_k.
  K shots: the local prototypes of every shot form one set.

The two scores [background, foreground] are resized bilinearly (align_corners=False) to
H x W; their softmax is the output. Losses: the query's cross-entropy (class weights 0.05 and
1.0, ignore index 255) and the alignment loss (`alignment_loss`).

A class with no prototype (the background when no window of its resized mask is > 0.95, e.g.
a support mask covering most of the image) scores 0 everywhere, as the original's sum over an
empty set does; so does a foreground whose resized mask is empty (its only prototype, the
global one, is then the zero vector, and its cosine with anything is 0). Such cases are
counted on the model: `ALPNet.prototype_free_counts` (see there).

Everything after the encoder is computed in float32 (or float64 for float64 inputs), also
under autocast. The computation is branchless (the foreground's two ways are both computed
and `torch.where` keeps one; absent prototypes are masked out of the softmax), so a training
step never waits for the device to learn how many prototypes there are.
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab_encoder import DeepLabResNet101Encoder, deeplab_feature_size
from .fafnet import default_predict_batch_size
from .interface import Losses
from .registry import register_model

SCORE_SCALE = 20.0                 # d_k = 20 <q, p_k>; the global-only score 20 * cos
NORM_FLOOR = 1e-4                  # L2 norms floored at 1e-4 (the cosine's eps)
MASKED_AVERAGE_EPS = 1e-5          # global prototype: sum(F M) / (sum(M) + 1e-5)
PROTOTYPE_THRESHOLD = 0.95         # a window is a prototype when its pooled mask is > 0.95
FOREGROUND_CHECK_WINDOW = 4        # local foreground prototypes when avg_pool(M, 4).max() >= 0.95
FOREGROUND_CHECK_THRESHOLD = 0.95
TRAINING_GRID = 8                  # training window: (h // 8) x (w // 8)
EVALUATION_WINDOW = 2              # evaluation window: 2 x 2
QUERY_CLASS_WEIGHTS = (0.05, 1.0)  # query cross-entropy: background, foreground
IGNORE_INDEX = 255
WAYS = 1

# The counters of `ALPNet.prototype_free_counts`, in the order of its buffer.
COUNTER_NAMES = ("background", "foreground", "align_background", "align_foreground")


class Prototypes(NamedTuple):
    """The prototypes of both classes for one support set (or one query's pseudo-masks).

    background [P_b, C] with background_valid [P_b] (bool: pooled mask > 0.95);
    foreground [P_f + K, C]: the local prototypes, then one global prototype per shot, with
    foreground_valid [P_f + K] (the global ones always valid);
    foreground_global [C]: the mean of the K global prototypes (the global-only score);
    foreground_local: bool scalar tensor, True when the foreground uses `foreground`
    (local + global), False when it uses `foreground_global` alone;
    foreground_empty: bool scalar tensor, True when the resized foreground masks are all 0
    (the global prototype is the zero vector).
    """
    background: torch.Tensor
    background_valid: torch.Tensor
    foreground: torch.Tensor
    foreground_valid: torch.Tensor
    foreground_global: torch.Tensor
    foreground_local: torch.Tensor
    foreground_empty: torch.Tensor


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def prototype_window(feature_size: Tuple[int, int], training: bool) -> Tuple[int, int]:
    """The local-prototype pooling window (= stride) for h x w features: (h // 8, w // 8) in
    training, (2, 2) in evaluation, each side clipped to [1, feature side] (tiny images)."""
    if training:
        window = tuple(side // TRAINING_GRID for side in feature_size)
    else:
        window = (EVALUATION_WINDOW, EVALUATION_WINDOW)
    return tuple(max(1, min(size, side)) for size, side in zip(window, feature_size))


def resize_masks(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Masks [N, H, W] -> [N, 1, h, w], bilinear, align_corners=False."""
    return F.interpolate(masks.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)


def local_prototypes(features: torch.Tensor, masks: torch.Tensor, window: Tuple[int, int]
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average-pooled features of every window, and which are prototypes of the class.

    Args:
        features: [K, C, h, w]; masks: [K, 1, h, w] (at feature resolution);
        window: (kh, kw), also the stride.
    Returns:
        (prototypes [K * n, C], valid [K * n] bool: the window's pooled mask > 0.95); shot by
        shot, windows in row-major order.
    """
    pooled = F.avg_pool2d(features, window, stride=window)
    pooled_masks = F.avg_pool2d(masks, window, stride=window)
    prototypes = pooled.flatten(2).transpose(1, 2).reshape(-1, features.shape[1])
    return prototypes, pooled_masks.flatten() > PROTOTYPE_THRESHOLD


def global_prototypes(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average at feature resolution, one per shot: [K, C, h, w], [K, 1, h, w] -> [K, C];
    sum(F M) / (sum(M) + 1e-5)."""
    return (features * masks).sum(dim=(-2, -1)) / (masks.sum(dim=(-2, -1)) + MASKED_AVERAGE_EPS)


def has_full_foreground_window(masks: torch.Tensor) -> torch.Tensor:
    """Bool scalar tensor: avg_pool2d(masks, 4).max() >= 0.95 over every shot ([K, 1, h, w];
    the window clipped to the feature size on maps smaller than 4)."""
    window = tuple(min(FOREGROUND_CHECK_WINDOW, side) for side in masks.shape[-2:])
    return F.avg_pool2d(masks, window, stride=window).max() >= FOREGROUND_CHECK_THRESHOLD


def safe_normalize(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / max(||x||_2, 1e-4) along `dim`."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(NORM_FLOOR)


def prototype_score(features: torch.Tensor, prototypes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sum_k softmax_k(d) d_k over the valid prototypes, d_k = 20 <q / |q|, p_k / |p_k|> (norms
    floored at 1e-4); 0 where no prototype is valid (the sum over an empty set).

    Args:
        features: [Q, C, h, w]; prototypes: [P, C]; valid: [P] bool.
    Returns:
        [Q, h, w].
    """
    distances = SCORE_SCALE * torch.einsum("qchw,pc->qphw", safe_normalize(features, 1),
                                           safe_normalize(prototypes, 1))
    keep = valid.view(1, -1, 1, 1)
    # Invalid prototypes get the lowest finite logit: exp underflows to exactly 0 beside any
    # valid one (|d| <= 20), and with none valid the softmax stays finite (uniform) and the
    # masked sum below is 0, with finite gradients.
    logits = distances.masked_fill(~keep, torch.finfo(distances.dtype).min)
    weights = torch.softmax(logits, dim=1)
    return torch.where(keep, weights * distances, torch.zeros_like(distances)).sum(dim=1)


def cosine_score(features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """20 * cosine similarity (each norm floored at 1e-4, as torch's cosine_similarity with
    eps 1e-4): [Q, C, h, w], [C] -> [Q, h, w]."""
    return SCORE_SCALE * (safe_normalize(features, 1) * safe_normalize(prototype, 0).view(1, -1, 1, 1)).sum(dim=1)


def episode_prototypes(features: torch.Tensor, foreground_masks: torch.Tensor, background_masks: torch.Tensor,
                       window: Tuple[int, int]) -> Prototypes:
    """Both classes' prototypes from features [K, C, h, w] and masks [K, 1, h, w] already at
    feature resolution, with local-prototype window `window`."""
    background, background_valid = local_prototypes(features, background_masks, window)
    local, local_valid = local_prototypes(features, foreground_masks, window)
    shot_global = global_prototypes(features, foreground_masks)
    foreground = torch.cat([local, shot_global])
    foreground_valid = torch.cat([local_valid, torch.ones(shot_global.shape[0], dtype=torch.bool,
                                                          device=local_valid.device)])
    return Prototypes(background, background_valid, foreground, foreground_valid, shot_global.mean(dim=0),
                      has_full_foreground_window(foreground_masks), foreground_masks.sum() == 0)


def class_scores(features: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
    """[background score, foreground score] at feature resolution: [Q, C, h, w] -> [Q, 2, h, w]."""
    background = prototype_score(features, prototypes.background, prototypes.background_valid)
    local = prototype_score(features, prototypes.foreground, prototypes.foreground_valid)
    global_only = cosine_score(features, prototypes.foreground_global)
    foreground = torch.where(prototypes.foreground_local, local, global_only)
    return torch.stack([background, foreground], dim=1)


def upsample_scores(scores: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Scores [N, 2, h, w] -> logits [N, 2, H, W], bilinear, align_corners=False."""
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


def query_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The query loss: cross-entropy of logits [Q, 2, H, W] with labels [Q, H, W], class weights
    0.05 (background) and 1.0 (foreground) (`class_weights`: the same as a tensor, e.g. the
    model's buffer), ignore index 255, weighted mean (sum of w_y * -log p_y over the pixels
    not ignored / sum of their w_y)."""
    logits = _at_least_float32(logits)
    if class_weights is None:
        weight = torch.tensor(QUERY_CLASS_WEIGHTS, dtype=logits.dtype, device=logits.device)
    else:
        weight = class_weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels.long(), weight=weight, ignore_index=IGNORE_INDEX)


def support_labels(masks: torch.Tensor) -> torch.Tensor:
    """Support masks [K, H, W] -> labels: 1 where the mask is 1, 0 where it is 0 (the
    background mask 1 - M is 1), 255 (ignored) elsewhere, as the original builds them."""
    ignore = torch.full(masks.shape, IGNORE_INDEX, dtype=torch.long, device=masks.device)
    labels = torch.where(masks == 0, torch.zeros_like(ignore), ignore)
    return torch.where(masks == 1, torch.ones_like(ignore), labels)


def per_shot_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum over shots of the unweighted cross-entropy (mean over the shot's pixels not
    ignored; a shot with every pixel ignored adds 0): [K, 2, H, W], [K, H, W] -> scalar."""
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")   # [K, H, W]
    counted = (labels != IGNORE_INDEX).flatten(1).sum(dim=1).clamp_min(1)
    return (losses.flatten(1).sum(dim=1) / counted).sum()


def alignment_loss(support_features: torch.Tensor, support_masks: torch.Tensor, query_features: torch.Tensor,
                   query_logits: torch.Tensor, window: Tuple[int, int]
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prototype alignment loss, averaged over the Q queries.

    For each query: its hard prediction (argmax of the H x W logits) gives a foreground and a
    background pseudo-mask, resized bilinearly (align_corners=False) to h x w; prototypes from
    the query's features with `window` (the training window); each support is scored with
    them, resized to H x W, and the unweighted cross-entropy of its mask (ignore 255) is
    summed over the shots and divided by K * ways. No query is skipped: an empty foreground
    pseudo-mask gives the zero global prototype (foreground score 0), an all-foreground one
    leaves the background without prototype (score 0); both give finite losses and gradients.

    Args:
        support_features: [K, C, h, w]; support_masks: [K, H, W]; query_features: [Q, C, h, w];
        query_logits: [Q, 2, H, W]; window: (kh, kw).
    Returns:
        (loss scalar, background_missing [Q] bool, foreground_empty [Q] bool).
    """
    shots = support_features.shape[0]
    image_size = tuple(support_masks.shape[-2:])
    feature_size = tuple(query_features.shape[-2:])
    labels = support_labels(support_masks)
    predictions = query_logits.argmax(dim=1)                                          # [Q, H, W]
    total = query_logits.new_zeros(())
    background_missing, foreground_empty = [], []
    for index in range(query_features.shape[0]):
        pseudo = torch.stack([predictions[index] == 0, predictions[index] == 1]).to(query_features.dtype)
        background_mask, foreground_mask = resize_masks(pseudo, feature_size).split(1)   # [1, 1, h, w] each
        prototypes = episode_prototypes(query_features[index:index + 1], foreground_mask, background_mask, window)
        logits = upsample_scores(class_scores(support_features, prototypes), image_size)     # [K, 2, H, W]
        total = total + per_shot_cross_entropy(logits, labels) / (shots * WAYS)
        background_missing.append(~prototypes.background_valid.any())
        foreground_empty.append(prototypes.foreground_empty)
    return total / query_features.shape[0], torch.stack(background_missing), torch.stack(foreground_empty)


class ALPNet(nn.Module):
    """SSL-ALPNet: local (grid) and global prototypes, scored by a softmax-weighted cosine
    similarity (module docstring).

    Args:
        image_size: (H, W) of every input image (256 x 256 -> 32 x 32 features).
        pretrained_weights: optional path to a torchvision ResNet-101 or DeepLabV3-ResNet-101
            state dict for the backbone (the original starts from COCO DeepLabV3).
        allow_partial_pretrained: accept a file lacking some backbone tensors the encoder runs.
        zero_init_residual: every bottleneck's last BatchNorm weight at 0 (random start).

    Attributes:
        prototype_free_counts (buffer, not in the state dict): int64 counters, in the order of
        `COUNTER_NAMES` (read them by name with `prototype_free_episodes`):
          "background": episodes (a `forward` call, or a `predict` call: one support set)
              whose support leaves the background without a prototype (its score is 0);
          "foreground": episodes whose resized support masks are all 0 (the foreground's only
              prototype is the zero vector; its score is 0);
          "align_background", "align_foreground": the same for the alignment loss, one count
              per query and forward call with labels (an all-foreground / empty query
              prediction).
        They only grow (no device synchronisation); `reset_prototype_counts` zeroes them.
    """

    def __init__(self, image_size: Tuple[int, int], pretrained_weights: Optional[str] = None,
                 allow_partial_pretrained: bool = False, zero_init_residual: bool = False):
        super().__init__()
        if len(tuple(image_size)) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}")
        self.image_size = tuple(image_size)
        self.feature_size = deeplab_feature_size(*self.image_size)
        self.encoder = DeepLabResNet101Encoder(pretrained_weights, allow_partial_pretrained, zero_init_residual)
        self.register_buffer("query_class_weights", torch.tensor(QUERY_CLASS_WEIGHTS, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("prototype_free_counts", torch.zeros(len(COUNTER_NAMES), dtype=torch.long),
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

    # -- counters ---------------------------------------------------------------------------
    def _count(self, name: str, flags: torch.Tensor) -> None:
        with torch.no_grad():
            self.prototype_free_counts[COUNTER_NAMES.index(name)] += flags.long().sum()

    @property
    def prototype_free_episodes(self) -> Dict[str, int]:
        """The counters of `prototype_free_counts` by name (reading them waits for the device)."""
        return dict(zip(COUNTER_NAMES, self.prototype_free_counts.tolist()))

    def counters(self) -> Dict[str, int]:
        """The counts the interface reports (train.log, the run's info, results.json): the
        episodes whose classes had no prototype, by where (`prototype_free_counts`)."""
        return {f"no_prototype_{name}": count for name, count in self.prototype_free_episodes.items()}

    def reset_prototype_counts(self) -> None:
        self.prototype_free_counts.zero_()

    # -- building blocks --------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> features [N, 256, h, w]."""
        return self.encoder(images)

    def window(self) -> Tuple[int, int]:
        """The local-prototype window of the current mode (`prototype_window`)."""
        return prototype_window(self.feature_size, self.training)

    def support_prototypes(self, support_features: torch.Tensor, support_masks: torch.Tensor) -> Prototypes:
        """Prototypes of the support set (float32 or float64) with the current mode's window,
        counting a class left without prototype: [K, C, h, w], [K, H, W] -> `Prototypes`."""
        features = _at_least_float32(support_features)
        masks = support_masks.to(features.dtype)
        resized = resize_masks(torch.cat([1.0 - masks, masks]), self.feature_size)    # [2K, 1, h, w]
        background_masks, foreground_masks = resized.split(masks.shape[0])
        prototypes = episode_prototypes(features, foreground_masks, background_masks, self.window())
        self._count("background", ~prototypes.background_valid.any())
        self._count("foreground", prototypes.foreground_empty)
        return prototypes

    def query_logits(self, query_features: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
        """Logits [Q, 2, H, W] (background, foreground) of query features [Q, C, h, w]."""
        features = _at_least_float32(query_features)
        return upsample_scores(class_scores(features, prototypes), self.image_size)

    # -- public API -------------------------------------------------------------------------
    def forward(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_images: torch.Tensor, query_labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Losses]:
        """One episode (the contract of fafnet.models.interface).

        Args:
            support_images: [K, 3, H, W]; support_masks: [K, H, W] in {0, 1};
            query_images: [Q, 3, H, W]; query_labels: [Q, H, W] integers (0, 1; 255 ignored).
        Returns:
            probs [Q, 2, H, W] (background, foreground; float32) and, with labels, the float32
            losses {"query_loss", "align_loss"}, else {}.
        """
        self._check_episode(support_images, support_masks, query_images)
        if query_labels is not None and tuple(query_labels.shape) != (query_images.shape[0],) + self.image_size:
            raise ValueError(f"query_labels must be [Q,H,W] = {(query_images.shape[0],) + self.image_size}, "
                             f"got {tuple(query_labels.shape)}")
        shots = support_images.shape[0]
        # One encoder pass over [supports; queries], as the original (BatchNorm batch statistics).
        features = self.encode(torch.cat([support_images, query_images], dim=0))
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = _at_least_float32(features)
            support_features, query_features = features[:shots], features[shots:]
            prototypes = self.support_prototypes(support_features, support_masks)
            logits = self.query_logits(query_features, prototypes)
            probs = torch.softmax(logits, dim=1)
            if query_labels is None:
                return probs, {}
            q_loss = query_cross_entropy(logits, query_labels, self.query_class_weights)
            align, background_missing, foreground_empty = alignment_loss(
                support_features, support_masks.to(features.dtype), query_features, logits,
                prototype_window(self.feature_size, training=True))
            self._count("align_background", background_missing)
            self._count("align_foreground", foreground_empty)
        return probs, {"query_loss": q_loss.float(), "align_loss": align.float()}

    def default_batch_size(self, device: torch.device) -> int:
        """Query slices per encoder pass in `predict` when none is given: 1 on the CPU, 8 on GPUs
        (`default_predict_batch_size`)."""
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
        """Inference: encodes the support once (its prototypes with the evaluation window) and
        the queries `batch_size` at a time (None: `default_batch_size` of the queries' device).
        Runs in eval mode, restoring the previous mode afterwards; counts one episode.

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
            support_features = self.encode(support_images)
            with torch.autocast(device_type=support_features.device.type, enabled=False):
                prototypes = self.support_prototypes(support_features, support_masks)
            foregrounds = []
            for batch in query_images.split(batch_size):
                query_features = self.encode(batch)
                with torch.autocast(device_type=query_features.device.type, enabled=False):
                    logits = self.query_logits(query_features, prototypes)
                    foregrounds.append(torch.softmax(logits, dim=1)[:, 1])
            return torch.cat(foregrounds)
        finally:
            self.train(was_training)


@register_model("ssl_alpnet", description="SSL-ALPNet (Ouyang et al. 2020): DeepLabV3-ResNet-101 encoder "
                "(output stride 8, 256 channels), local grid prototypes plus a global foreground prototype, "
                "softmax-weighted cosine scores, prototype alignment loss")
def ssl_alpnet(image_size: Sequence[int], pretrained_weights: Optional[str] = None,
               allow_partial_pretrained: bool = False, *, zero_init_residual: bool = False) -> ALPNet:
    """SSL-ALPNet with the backbone from `pretrained_weights` (a path; None: the encoder's own
    initialisation; a file missing backbone tensors is an error unless
    `allow_partial_pretrained`).

    Option: `zero_init_residual` (every bottleneck's last BatchNorm weight at 0, torchvision's
    option, for a random start). The default is the original.
    """
    return ALPNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights,
                  allow_partial_pretrained=allow_partial_pretrained, zero_init_residual=zero_init_residual)
