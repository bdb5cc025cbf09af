"""Models: the interface every model follows, the registry that builds them by name, and
FAF-Net (encoder, ICM/AFF modules, the network, its losses and checkpoint helpers)."""
from .encoder import ResNet101Encoder, feature_size
from .factory import build_fafnet, scale_threshold_head, zero_init_residual
from .fafnet import FAFNet, clamped_nll, default_predict_batch_size, query_loss
from .interface import check_query_labels, image_encoder, total_loss
from .modules import AFF, ICM, apply_fourier_filters, masked_average_pooling
from .pretrained import default_pretrained_weights, load_pretrained_backbone
from .registry import (DEFAULT_MODEL, MODELS, ModelSpec, build_model, get_model_spec, model_from_options, model_options,
                       register_model)
from .release import convert_release_checkpoint

__all__ = [
    "AFF",
    "DEFAULT_MODEL",
    "FAFNet",
    "ICM",
    "MODELS",
    "ModelSpec",
    "ResNet101Encoder",
    "apply_fourier_filters",
    "build_fafnet",
    "build_model",
    "check_query_labels",
    "clamped_nll",
    "convert_release_checkpoint",
    "default_predict_batch_size",
    "default_pretrained_weights",
    "feature_size",
    "get_model_spec",
    "image_encoder",
    "load_pretrained_backbone",
    "masked_average_pooling",
    "model_from_options",
    "model_options",
    "query_loss",
    "register_model",
    "scale_threshold_head",
    "total_loss",
    "zero_init_residual",
]
