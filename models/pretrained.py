"""Loading pretrained ResNet-101 backbone weights from a local file (docs/protocol.md section 2).

Two torchvision formats are accepted:

- ImageNet ResNet-101 (`resnet101-63fe2227.pth`): keys without prefix (`conv1.weight`,
  `layer1.0.conv1.weight`, ...); `fc.*` is ignored.
- DeepLabV3-ResNet-101 (`deeplabv3_resnet101_coco-586e9e4e.pth`): backbone keys start with
  `backbone.`; `classifier.*` and `aux_classifier.*` are ignored.

Unlike the release (which silently loads nothing from the ImageNet file), a file from which no
tensor matches is an error. Files are read with `weights_only=True`: no code runs on load.
"""
import logging
import os
from typing import Dict, Mapping, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_URL = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
DEEPLABV3_URL = "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth"
ACCEPTED_FORMATS = (
    "accepted formats: a torchvision ResNet-101 state dict (keys like 'layer1.0.conv1.weight', "
    f"e.g. {IMAGENET_URL}) or a torchvision DeepLabV3-ResNet-101 state dict (keys like "
    f"'backbone.layer1.0.conv1.weight', e.g. {DEEPLABV3_URL})"
)
DEEPLAB_PREFIX = "backbone."
# Wrappers some training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model")


def default_pretrained_weights() -> Optional[str]:
    """The first of the two accepted files found in torchvision's cache
    (`torch.hub.get_dir()/checkpoints`), DeepLabV3 first (the paper's choice); None if neither."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    for url in (DEEPLABV3_URL, IMAGENET_URL):
        path = os.path.join(folder, os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def _read_state_dict(path: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path!r}; {ACCEPTED_FORMATS}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"cannot read pretrained weights {path!r} ({error}); {ACCEPTED_FORMATS}") from error
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained weights {path!r} hold a {type(state).__name__}, not a state dict; "
                         f"{ACCEPTED_FORMATS}")
    return state


def _backbone_tensors(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys renamed to the backbone's own names (DeepLabV3 prefix stripped when present)."""
    is_deeplab = any(key.startswith(DEEPLAB_PREFIX) for key in state)
    if is_deeplab:
        return {key[len(DEEPLAB_PREFIX):]: value for key, value in state.items() if key.startswith(DEEPLAB_PREFIX)}
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def load_pretrained_backbone(backbone: nn.Module, path: str) -> int:
    """Copies matching tensors of the file at `path` into `backbone` (a torchvision ResNet).

    Returns the number of tensors loaded (parameters and BatchNorm buffers). Raises
    FileNotFoundError for a missing file, ValueError for an unreadable file, a file with no
    matching tensor, or a matching name with the wrong shape.
    """
    path = os.fspath(path)
    candidates = _backbone_tensors(_read_state_dict(path))
    own = backbone.state_dict()
    matched = {}
    for name, value in candidates.items():
        if name not in own or not isinstance(value, torch.Tensor):
            continue
        if value.shape != own[name].shape:
            raise ValueError(f"pretrained weights {path!r}: tensor {name!r} has shape {tuple(value.shape)}, "
                             f"the ResNet-101 backbone expects {tuple(own[name].shape)}; {ACCEPTED_FORMATS}")
        matched[name] = value
    if not matched:
        raise ValueError(f"pretrained weights {path!r} contain no ResNet-101 backbone tensor; {ACCEPTED_FORMATS}")
    backbone.load_state_dict(matched, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(matched), len(own), path)
    return len(matched)
