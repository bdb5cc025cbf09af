"""Loading pretrained ResNet-101 backbone weights from a local file (docs/protocol.md section 2).

Two torchvision formats are accepted:

- ImageNet ResNet-101 (`resnet101-63fe2227.pth`): keys without prefix (`conv1.weight`,
  `layer1.0.conv1.weight`, ...); `fc.*` is ignored.
- DeepLabV3-ResNet-101 (`deeplabv3_resnet101_coco-586e9e4e.pth`): backbone keys start with
  `backbone.`; `classifier.*` and `aux_classifier.*` are ignored.

Unlike the release (which silently loads nothing from the ImageNet file), the file must cover
the whole part of the backbone that the model runs (the modules its encoder names: FAF-Net's
conv1, bn1 and layer1 to layer3; ADNet's and SSL-ALPNet's layer4 too), every parameter and
BatchNorm running statistic. A partial match (a ResNet-50 file matches only 318 of the 624
tensors) is an error that summarises what is missing, unless `allow_partial=True`. Other
backbone tensors are loaded when present (FAF-Net never runs layer4, which both accepted files
hold and its checkpoints keep) but not required. `num_batches_tracked`
counters are not required either (older files lack them; BatchNorm fills them in).
Files are read with `weights_only=True`: no code runs on load.
"""
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from fafnet.io.weights import DEEPLABV3_FILE, DOWNLOAD_URL, IMAGENET_FILE

logger = logging.getLogger(__name__)

IMAGENET_URL = DOWNLOAD_URL + IMAGENET_FILE
DEEPLABV3_URL = DOWNLOAD_URL + DEEPLABV3_FILE
ACCEPTED_FORMATS = (
    "accepted formats: a torchvision ResNet-101 state dict (keys like 'layer1.0.conv1.weight', "
    f"e.g. {IMAGENET_URL}) or a torchvision DeepLabV3-ResNet-101 state dict (keys like "
    f"'backbone.layer1.0.conv1.weight', e.g. {DEEPLABV3_URL})"
)
DEEPLAB_PREFIX = "backbone."
# Wrappers some training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model")
_OPTIONAL_SUFFIX = "num_batches_tracked"
_MAX_LISTED = 6
# The config option that passes allow_partial=True.
PARTIAL_OPTION = "pretrained_allow_partial"


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


def required_tensor_names(backbone: nn.Module, modules: Sequence[str]) -> List[str]:
    """The backbone's state-dict names a pretrained file must provide: those of `modules`
    (the top-level backbone modules the encoder runs), BatchNorm counters excepted."""
    return [name for name in backbone.state_dict()
            if name.split(".")[0] in modules and not name.endswith(_OPTIONAL_SUFFIX)]


def _block(name: str) -> str:
    """'layer3.7.conv1.weight' -> 'layer3.7'; 'bn1.weight' -> 'bn1'."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0].startswith("layer") else parts[0]


def _whole_block_ranges(blocks: Sequence[str]) -> List[str]:
    """['layer3.6', 'layer3.7', 'layer3.8', 'layer2.1'] -> ['layer3.6-8', 'layer2.1']:
    consecutive blocks of one layer merged into a range; other names kept."""
    ranges: List[List] = []   # [layer, first index, last index] or [name, None, None]
    for block in blocks:
        layer, _, index = block.partition(".")
        last = ranges[-1] if ranges else None
        if index and last and last[0] == layer and last[2] is not None and last[2] + 1 == int(index):
            last[2] = int(index)
        else:
            ranges.append([layer, int(index), int(index)] if index else [block, None, None])
    return [name if first is None else f"{name}.{first}" + (f"-{last}" if last > first else "")
            for name, first, last in ranges]


def summarise_missing(missing: Sequence[str], required: Sequence[str]) -> str:
    """The missing tensors by block, in the backbone's order: whole blocks as ranges
    ('layer3.6-22: all 255 tensors'), partial ones with names ('layer2.1: 2 of 15 tensors
    (conv1.weight, bn1.running_var)')."""
    total: Dict[str, int] = {}
    for name in required:
        total[_block(name)] = total.get(_block(name), 0) + 1
    absent: Dict[str, List[str]] = {}
    for name in missing:
        absent.setdefault(_block(name), []).append(name[len(_block(name)) + 1:])
    whole = [block for block in total if len(absent.get(block, ())) == total[block]]
    parts = []
    if whole:
        count = sum(total[block] for block in whole)
        parts.append(f"{', '.join(_whole_block_ranges(whole))}: all {count} tensors")
    for block in total:
        names = absent.get(block, [])
        if names and block not in whole:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{block}: {len(names)} of {total[block]} tensors ({shown})")
    listed = "; ".join(parts[:_MAX_LISTED])
    return listed + (f"; and {len(parts) - _MAX_LISTED} more blocks" if len(parts) > _MAX_LISTED else "")


def load_pretrained_backbone(backbone: nn.Module, path: str, required_modules: Sequence[str],
                             allow_partial: bool = False) -> int:
    """Copies matching tensors of the file at `path` into `backbone` (a torchvision ResNet).

    Args:
        required_modules: the top-level backbone modules the model runs (e.g. conv1, bn1,
            layer1 to layer3): the file must hold every tensor of them.
        allow_partial: accept a file that lacks some of the required tensors: the missing
            ones keep their initialisation, with a warning.
    Returns:
        the number of tensors loaded (parameters and BatchNorm buffers).
    Raises:
        FileNotFoundError: a missing file.
        ValueError: an unreadable file, a file with no matching tensor, a matching name with
            the wrong shape, or (unless `allow_partial`) one lacking required tensors, with
            a summary of what is missing.
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
    required = required_tensor_names(backbone, required_modules)
    missing = [name for name in required if name not in matched]
    if missing:
        summary = (f"pretrained weights {path!r} match {len(matched)} of {len(own)} backbone tensors "
                   f"and lack {len(missing)} of the {len(required)} that the encoder runs "
                   f"({', '.join(required_modules)}): {summarise_missing(missing, required)}")
        if not allow_partial:
            raise ValueError(f"{summary}; is it a ResNet-101 file? To train the missing tensors from "
                             f"their initialisation, allow a partial load explicitly "
                             f"({PARTIAL_OPTION}=True); {ACCEPTED_FORMATS}")
        logger.warning("%s; loading the rest (partial load allowed)", summary)
    backbone.load_state_dict(matched, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(matched), len(own), path)
    return len(matched)
