"""Models: the interface every model follows (interface.py), the registry that builds them by
name (registry.py), and the models, each registering its builder beside it: FAF-Net
(fafnet.py with encoder.py, modules.py), ADNet (adnet.py) and SSL-ALPNet (ssl_alpnet.py)."""
from .adnet import ADNet, adnet
from .encoder import ResNet101Encoder, feature_size
from .factory import zero_init_residual
from .fafnet import FAFNet, clamped_nll, default_predict_batch_size, fafnet, query_loss, scale_threshold_head
from .interface import check_query_labels, image_encoder, model_counters, predict_batch_size, total_loss
from .modules import AFF, ICM, apply_fourier_filters, masked_average_pooling
from .pretrained import load_pretrained_backbone
from .registry import (DEFAULT_MODEL, MODELS, NO_PRETRAINED, ModelEntry, build_model, get_model, register_model,
                       resolve_model_options, unregister_model)
from .release import convert_release_checkpoint
from .ssl_alpnet import ALPNet, ssl_alpnet

__all__ = [
    "ADNet",
    "AFF",
    "ALPNet",
    "DEFAULT_MODEL",
    "FAFNet",
    "ICM",
    "MODELS",
    "ModelEntry",
    "NO_PRETRAINED",
    "ResNet101Encoder",
    "adnet",
    "apply_fourier_filters",
    "build_model",
    "check_query_labels",
    "clamped_nll",
    "convert_release_checkpoint",
    "default_predict_batch_size",
    "fafnet",
    "feature_size",
    "get_model",
    "image_encoder",
    "load_pretrained_backbone",
    "masked_average_pooling",
    "model_counters",
    "predict_batch_size",
    "query_loss",
    "register_model",
    "resolve_model_options",
    "scale_threshold_head",
    "ssl_alpnet",
    "total_loss",
    "unregister_model",
    "zero_init_residual",
]
