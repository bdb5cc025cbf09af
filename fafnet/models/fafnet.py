"""FAF-Net: prototype -> ICM/AFF refinement -> cosine similarity with an adaptive threshold
(docs/protocol.md sections 3 to 7), and its builder `fafnet` (registered as model "fafnet").

1-way K-shot: K support slices of one class, Q query slices sharing that support. The three
modules of the paper's claim can be switched off one by one (docs/protocol.md section 14):
`icm=False` (the prototype goes unrefined to the prediction), `aff=False` (the ICM's
attention unfiltered) and `threshold="scalar"` (one learned threshold instead of the ATL map);
all off is the prototype baseline the modules are added to.
"""
from typing import Dict, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import FEATURE_CHANNELS, ResNet101Encoder, feature_size, image_sides_for_feature
from . import factory
from .interface import Losses, check_query_labels
from .modules import ICM, masked_average_pooling
from .registry import register_model
from .release import convert_release_checkpoint

SIMILARITY_SCALE = 20.0   # d = -20 * cosine similarity
THRESHOLD_SLOPE = 0.5     # P = 1 - sigmoid(0.5 * (d - T))
QUERY_CLASS_WEIGHTS = (0.1, 1.0)
SCALAR_THRESHOLD_INIT = -10.0   # threshold="scalar": T's initial value, as ADNet's
THRESHOLDS = ("adaptive", "scalar")


# The one weight whose shape depends on the image size: the AFF amplitude branch's Linear,
# [h * (w // 2 + 1), h * w] for feature maps of h x w pixels.
SIZE_DEPENDENT_WEIGHT = "icm.aff.amplitude.spectrum_linear.weight"


def feature_size_of_state(state) -> Optional[Tuple[int, int]]:
    """The feature-map size (h, w) a FAF-Net state dict (this project's names) was made for,
    read from the shape of `SIZE_DEPENDENT_WEIGHT`; None when the dict lacks it (no AFF) or
    no single size fits."""
    weight = state.get(SIZE_DEPENDENT_WEIGHT) if hasattr(state, "get") else None
    if not torch.is_tensor(weight) or weight.dim() != 2:
        return None
    n_out, n_in = weight.shape
    fits = [(h, n_in // h) for h in range(1, n_in + 1)
            if n_in % h == 0 and h * ((n_in // h) // 2 + 1) == n_out]
    return fits[0] if len(fits) == 1 else None


def image_size_of_state(state) -> Optional[str]:
    """Which image sizes a FAF-Net state dict fits, as text for an error message (the AFF
    Linear's shape tells); None when it cannot tell."""
    fitted = feature_size_of_state(state)
    if fitted is None:
        return None
    heights, widths = (image_sides_for_feature(side) for side in fitted)
    return (f"its weights were made for {fitted[0]} x {fitted[1]} feature maps, i.e. image_size="
            f"[{heights[0]}, {widths[0]}] (any of {heights[0]}..{heights[-1]} by {widths[0]}..{widths[-1]}); "
            f"evaluate it with image_size=[{heights[0]}, {widths[0]}]")


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def clamped_nll(probs: torch.Tensor, labels: torch.Tensor,
                class_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Negative log-likelihood of `labels` under `probs`, clamped to [eps, 1 - eps] with eps the
    float32 machine epsilon; with class weights the mean is weighted:
    sum(w_y * -log p_y) / sum(w_y).

    Args:
        probs: [N, 2, H, W] probabilities (background, foreground).
        labels: [N, H, W] integers in {0, 1}.
    """
    if probs.dim() != 4 or labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"probs must be [N,2,H,W] and labels [N,H,W], got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    eps = torch.finfo(torch.float32).eps
    log_probs = _at_least_float32(probs).clamp(eps, 1.0 - eps).log()
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=log_probs.dtype, device=probs.device)
    return F.nll_loss(log_probs, labels.long(), weight=weight)


def query_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The query loss (docs/protocol.md section 7): class-weighted NLL, weights 0.1 (background),
    1.0 (foreground).

    Args:
        probs: [Q, 2, H, W] output of FAFNet.forward.
        labels: [Q, H, W] long in {0, 1}.
    Returns:
        scalar loss (float32).
    """
    check_query_labels(labels)
    return clamped_nll(probs, labels, QUERY_CLASS_WEIGHTS)


def default_predict_batch_size(device: torch.device) -> int:
    """Query slices per encoder pass in `FAFNet.predict` when none is given: 1 on the CPU,
    where larger batches spill layer3's activations out of the cache (bench/bench_model.py),
    and 8 on GPUs (CUDA, MPS), which need batches to fill the device."""
    return 1 if torch.device(device).type == "cpu" else 8


class FAFNet(nn.Module):
    """Frequency-aware Adaptive Filtering Network.

    Args:
        image_size: (H, W) of every input image; fixes the AFF filter sizes through the
            encoder arithmetic (257 x 257 -> 65 x 65 features, 256 x 256 -> 64 x 64).
        pretrained_weights: optional path to a torchvision ResNet-101 or DeepLabV3-ResNet-101
            state dict for the backbone.
        heads: attention heads m of the ICM.
        run_discarded_layers: also run layer4 + reduce2 and discard them, as the release does
            (no output changes; for benchmarks only).
        allow_partial_pretrained: accept a `pretrained_weights` file that lacks some of the
            backbone tensors the encoder runs (default: an error listing them).
        icm: refine the prototype with the ICM (False: p' = p, in the main and the alignment
            path; the prototype loss then compares the unrefined prototypes).
        aff: filter the ICM's attention with the AFF (needs `icm`).
        threshold: "adaptive" (the ATL head's map T) or "scalar" (one learned T, initially
            -10, for queries and supports alike; no ATL head).
    """

    def __init__(self, image_size: Tuple[int, int], pretrained_weights: Optional[str] = None,
                 heads: int = 4, run_discarded_layers: bool = False,
                 allow_partial_pretrained: bool = False, icm: bool = True, aff: bool = True,
                 threshold: str = "adaptive"):
        super().__init__()
        if len(tuple(image_size)) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}")
        check_switches({"icm": icm, "aff": aff, "threshold": threshold})
        self.image_size = tuple(image_size)
        self.feature_size = feature_size(*self.image_size)
        self.encoder = ResNet101Encoder(pretrained_weights, run_discarded_layers,
                                        allow_partial_pretrained, threshold_head=threshold == "adaptive")
        self.icm = ICM(FEATURE_CHANNELS, heads, self.feature_size, aff=aff) if icm else None
        self.scalar_threshold = (nn.Parameter(torch.tensor(SCALAR_THRESHOLD_INIT))
                                 if threshold == "scalar" else None)
        # Not in the state dict; a buffer so it follows the model to its device once (a tensor
        # made per step would be a host-to-device copy, which a CUDA graph cannot capture).
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
    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] -> (features [N, C, h, w], thresholds [N, 1, h, w], or the
        scalar threshold as [1, 1, 1, 1] with threshold="scalar")."""
        features, thresholds = self.encoder(images)
        if self.scalar_threshold is not None:
            thresholds = self.scalar_threshold.view(1, 1, 1, 1)
        return features, thresholds

    def refine(self, prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The ICM's refined prototypes [B, C] (section 4), or `prototypes` without an ICM."""
        return prototypes if self.icm is None else self.icm(prototypes, features)

    def segment(self, features: torch.Tensor, thresholds: torch.Tensor,
                prototypes: torch.Tensor) -> torch.Tensor:
        """Foreground probability from cosine similarity and the threshold (section 6).

        Computed in float32 or float64 (also under autocast) so the probabilities feed the log
        safely.

        Args:
            features: [B, C, h, w]; thresholds: [B, 1, h, w] (each image's own map) or
            [1, 1, 1, 1] (the scalar threshold); prototypes: [B, C] (prototype b is compared
            with feature map b).
        Returns:
            foreground probabilities [B, H, W].
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = _at_least_float32(features)
            prototypes = prototypes.to(features.dtype)[..., None, None]
            similarity = F.cosine_similarity(features, prototypes, dim=1)
            distance = -SIMILARITY_SCALE * similarity
            foreground = 1.0 - torch.sigmoid(THRESHOLD_SLOPE * (distance - thresholds.to(features.dtype)[:, 0]))
            return F.interpolate(foreground.unsqueeze(1), size=self.image_size, mode="bilinear",
                                 align_corners=True).squeeze(1)

    def support_prototype(self, support_features: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """Mean of the K per-shot masked average prototypes: [K,C,h,w], [K,H,W] -> [1, C]."""
        return masked_average_pooling(support_features, support_masks).mean(dim=0, keepdim=True)

    def segment_queries(self, prototype: torch.Tensor, query_features: torch.Tensor,
                        query_thresholds: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Main path: prototype [1, C] refined over each query, then segmented.

        Returns:
            (foreground [Q, H, W], refined prototypes [Q, C]).
        """
        prototypes = prototype.expand(query_features.shape[0], -1)
        refined = self.refine(prototypes, query_features)
        return self.segment(query_features, query_thresholds, refined), refined

    def alignment_losses(self, support_features: torch.Tensor, support_thresholds: torch.Tensor,
                         support_masks: torch.Tensor, query_features: torch.Tensor,
                         query_probs: torch.Tensor, refined_support_prototypes: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Alignment and prototype losses (section 7), averaged over the Q queries.

        For each query with a non-empty predicted foreground: its prototype under that
        pseudo-mask is refined over each support's features (AFF filters from the support),
        segments that support with the support's own threshold map (NLL, summed over shots and
        divided by K), and is compared (MSE, averaged over shots) with the refined support
        prototype of the main path. A query without predicted foreground contributes 0.

        Branchless: the losses are computed for every query and `torch.where` keeps those of
        queries with foreground, so the step never waits for the device to learn whether a
        pseudo-mask is empty (and can be captured in a CUDA graph). A query without
        foreground then adds exactly 0 to the losses and exactly 0 to every gradient: its
        losses are finite (its prototype is 0 / (0 + 1e-5) = 0) and where() passes no
        gradient to the branch it does not select.
        """
        shots = support_features.shape[0]
        queries = query_features.shape[0]
        pseudo_masks = (query_probs.argmax(dim=1) == 1).to(query_features.dtype)   # [Q, H, W]
        has_foreground = pseudo_masks.flatten(1).any(dim=1)                          # [Q] bool
        align_loss = query_probs.new_zeros(())
        proto_loss = query_probs.new_zeros(())
        for index in range(queries):
            query_prototype = masked_average_pooling(query_features[index:index + 1], pseudo_masks[index:index + 1])
            refined = self.refine(query_prototype.expand(shots, -1), support_features)   # [K, C]
            foreground = self.segment(support_features, support_thresholds, refined)     # [K, H, W]
            support_probs = torch.stack([1.0 - foreground, foreground], dim=1)
            # One NLL over all K masks = sum of the per-shot means / K (equal pixel counts).
            align = clamped_nll(support_probs, support_masks.round().long())
            target = refined_support_prototypes[index:index + 1].expand(shots, -1)
            proto = F.mse_loss(_at_least_float32(refined), _at_least_float32(target))
            keep = has_foreground[index]
            align_loss = align_loss + torch.where(keep, align, align.new_zeros(()))
            proto_loss = proto_loss + torch.where(keep, proto, proto.new_zeros(()))
        return align_loss / queries, proto_loss / queries

    # -- public API -------------------------------------------------------------------------
    def forward(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_images: torch.Tensor, query_labels: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Losses]:
        """One episode (the contract of fafnet.models.interface).

        Args:
            support_images: [K, 3, H, W]; support_masks: [K, H, W] in {0, 1};
            query_images: [Q, 3, H, W]; query_labels: [Q, H, W] integers in {0, 1}, for
            training (the caller checks them: `check_query_labels`).
        Returns:
            probs [Q, 2, H, W] (background, foreground) and, with labels, the float32 losses
            {"query_loss", "align_loss", "proto_loss"} (section 7), else {}.
        """
        self._check_episode(support_images, support_masks, query_images)
        shots = support_images.shape[0]
        # One encoder pass over [supports; queries]: in training BatchNorm shares batch statistics.
        features, thresholds = self.encode(torch.cat([support_images, query_images], dim=0))
        support_features, query_features = features[:shots], features[shots:]
        support_thresholds, query_thresholds = self._split_thresholds(thresholds, shots)
        prototype = self.support_prototype(support_features, support_masks)
        foreground, refined = self.segment_queries(prototype, query_features, query_thresholds)
        probs = torch.stack([1.0 - foreground, foreground], dim=1)
        if query_labels is None:
            return probs, {}
        align_loss, proto_loss = self.alignment_losses(
            support_features, support_thresholds, support_masks, query_features, probs, refined)
        # After the alignment losses: the autograd graph, and so the order in which gradients
        # are summed, is the one of the reference step that the training tests pin.
        with torch.autocast(device_type=probs.device.type, enabled=False):
            q_loss = clamped_nll(probs.float(), query_labels, self.query_class_weights)
        return probs, {"query_loss": q_loss, "align_loss": align_loss.float(), "proto_loss": proto_loss.float()}

    def _split_thresholds(self, thresholds: torch.Tensor, shots: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the supports', the queries') thresholds of one encoder pass over [supports; queries]."""
        if self.scalar_threshold is not None:
            return thresholds, thresholds
        return thresholds[:shots], thresholds[shots:]

    def default_batch_size(self, device: torch.device) -> int:
        """Query slices per encoder pass in `predict` when none is given (see
        `default_predict_batch_size`)."""
        return default_predict_batch_size(device)

    def image_encoder(self) -> nn.Module:
        """The encoder (images -> features, threshold maps): the compile and graph target."""
        return self.encoder

    @property
    def pretrained_tensors_loaded(self) -> int:
        """Backbone tensors read from `pretrained_weights` (0 without a file)."""
        return self.encoder.pretrained_tensors_loaded

    @torch.no_grad()
    def predict(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_images: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """Inference: encodes the support once and the queries `batch_size` at a time
        (None: `default_predict_batch_size` of the queries' device, 1 on the CPU, 8 on GPUs).

        Runs in eval mode (restoring the previous mode afterwards), so it equals separate
        eval-mode `forward` calls, one per query.

        Returns:
            foreground probabilities [Q, H, W].
        """
        self._check_episode(support_images, support_masks, query_images)
        if batch_size is None:
            batch_size = default_predict_batch_size(query_images.device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        was_training = self.training
        self.eval()
        try:
            support_features, _ = self.encode(support_images)
            prototype = self.support_prototype(support_features, support_masks)
            foregrounds = []
            for batch in query_images.split(batch_size):
                query_features, query_thresholds = self.encode(batch)
                foregrounds.append(self.segment_queries(prototype, query_features, query_thresholds)[0])
            return torch.cat(foregrounds)
        finally:
            self.train(was_training)


def check_switches(options: Dict) -> None:
    """The ablation switches' relations: the AFF filters the ICM's attention, so it needs the ICM."""
    if options["threshold"] not in THRESHOLDS:
        raise ValueError(f"config option model_options.threshold={options['threshold']!r} must be one of "
                         f"{', '.join(THRESHOLDS)}")
    if options["aff"] and not options["icm"]:
        raise ValueError("config option model_options.aff=True needs icm=True (the AFF filters the ICM's "
                         "attention); with icm=False pass aff=False too")


def check_fafnet_options(options: Dict) -> None:
    """FAF-Net's options together (the registry calls it before anything is built)."""
    check_switches(options)
    if options["threshold_head_init_scale"] <= 0:
        raise ValueError(f"config option model_options.threshold_head_init_scale="
                         f"{options['threshold_head_init_scale']!r} must be > 0 (1.0: the release's initialisation)")
    if options["threshold"] == "scalar" and options["threshold_head_init_scale"] != 1.0:
        raise ValueError("config option model_options.threshold_head_init_scale scales the ATL head, which "
                         "threshold='scalar' does not have; leave it at 1.0")


def scale_threshold_head(model: FAFNet, factor: float) -> None:
    """Multiply the initial weights of the threshold head's output conv (512 -> 1) by `factor`
    (the option `threshold_head_init_scale`; 1.0 is the release). A random start needs a small
    factor: the release's initialisation makes the threshold map, not the similarity, decide
    the first predictions (docs/real_data.md)."""
    with torch.no_grad():
        model.encoder.threshold_head[-1].weight.mul_(factor)


@register_model("fafnet", description="FAF-Net: ResNet-101 encoder with the ATL threshold head, ICM + AFF on "
                "the support prototype", check=check_fafnet_options, convert_checkpoint=convert_release_checkpoint,
                image_size_hint=image_size_of_state)
def fafnet(image_size: Sequence[int], pretrained_weights: Optional[str] = None,
           allow_partial_pretrained: bool = False, *, icm: bool = True, aff: bool = True,
           threshold: Literal["adaptive", "scalar"] = "adaptive", zero_init_residual: bool = False,
           threshold_head_init_scale: float = 1.0) -> FAFNet:
    """FAF-Net with the backbone from `pretrained_weights` (a path; None: the encoder's own
    initialisation; a file missing backbone tensors is an error unless
    `allow_partial_pretrained`).

    Options: `icm`, `aff`, `threshold`: the ablation switches (see `FAFNet`); for a random
    start (no pretrained weights), `zero_init_residual` (every bottleneck's last BatchNorm
    weight at 0, torchvision's option) and `threshold_head_init_scale` (the ATL head's output
    conv starts at this times the release's initial weights). The defaults are the release.
    """
    model = FAFNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights,
                   allow_partial_pretrained=allow_partial_pretrained, icm=icm, aff=aff, threshold=threshold)
    if zero_init_residual:
        factory.zero_init_residual(model)
    if threshold_head_init_scale != 1.0:
        scale_threshold_head(model, threshold_head_init_scale)
    return model

