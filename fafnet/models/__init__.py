"""FAF-Net model: encoder, ICM/AFF modules, the network, its losses and checkpoint helpers."""
from .encoder import ResNet101Encoder, feature_size
from .factory import build_model, scale_threshold_head, zero_init_residual
from .fafnet import FAFNet, check_query_labels, clamped_nll, default_predict_batch_size, query_loss
from .modules import AFF, ICM, apply_fourier_filters, masked_average_pooling
from .pretrained import default_pretrained_weights, load_pretrained_backbone
from .release import convert_release_checkpoint

__all__ = [
    "AFF",
    "FAFNet",
    "ICM",
    "ResNet101Encoder",
    "apply_fourier_filters",
    "build_model",
    "check_query_labels",
    "clamped_nll",
    "convert_release_checkpoint",
    "default_predict_batch_size",
    "default_pretrained_weights",
    "feature_size",
    "load_pretrained_backbone",
    "masked_average_pooling",
    "query_loss",
    "scale_threshold_head",
    "zero_init_residual",
]
