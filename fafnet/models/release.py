"""Converting a state dict saved by the authors' FAF-Net release to this project's names.

The release stores `encoder.backbone.*` (torchvision ResNet-101 names, fc included),
`encoder.reduce1/reduce2/down.*` and the attention module as `cross_att.*`, with the
amplitude branch's Linear as `down1` and the phase branch's as `down2`. The result loads with
`strict=True` into `FAFNet(image_size=(257, 257))`, the release's only image size.
"""
from collections import OrderedDict
from typing import Dict, Mapping

import torch

# Release name prefix -> this project's name prefix. Longest prefixes are tried first.
_PREFIX_MAP: Dict[str, str] = {
    "encoder.backbone.": "encoder.backbone.",
    "encoder.reduce1.": "encoder.reduce_features.",
    "encoder.reduce2.": "encoder.reduce_layer4.",
    "encoder.down.0.": "encoder.threshold_head.0.",
    "encoder.down.2.": "encoder.threshold_head.2.",
    "cross_att.fc_q.": "icm.query_proj.",
    "cross_att.fc_k.": "icm.key_proj.",
    "cross_att.fc_v.": "icm.value_proj.",
    "cross_att.fc_o.": "icm.out_proj.",
    "cross_att.amp_res1.0.": "icm.aff.amplitude.conv_in.",
    "cross_att.amp_res2.1.": "icm.aff.amplitude.conv_mid.",
    "cross_att.amp_res3.1.": "icm.aff.amplitude.conv_heads.",
    "cross_att.down1.": "icm.aff.amplitude.spectrum_linear.",
    "cross_att.pha_res1.0.": "icm.aff.phase.conv_in.",
    "cross_att.pha_res2.1.": "icm.aff.phase.conv_mid.",
    "cross_att.pha_res3.1.": "icm.aff.phase.conv_heads.",
    "cross_att.down2.": "icm.aff.phase.spectrum_linear.",
}
# The release's backbone keeps torchvision's ImageNet classifier; this model drops it.
_DROPPED_PREFIXES = ("encoder.backbone.fc.",)
# Added by torch.nn.DataParallel / DistributedDataParallel when saving the wrapper.
_WRAPPER_PREFIX = "module."


def _rename(key: str) -> str:
    for release_prefix in sorted(_PREFIX_MAP, key=len, reverse=True):
        if key.startswith(release_prefix):
            return _PREFIX_MAP[release_prefix] + key[len(release_prefix):]
    raise KeyError(key)


def convert_release_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Renames a release state dict for `FAFNet(image_size=(257, 257))`.load_state_dict(strict=True).

    layer4 and reduce2 are kept (this model keeps them as unused parameters); the backbone's
    `fc` is dropped. Raises ValueError listing any key the release does not have.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"convert_release_checkpoint needs a state dict, got {type(state_dict).__name__}")
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        name = key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key
        if name.startswith(_DROPPED_PREFIXES):
            continue
        try:
            converted[_rename(name)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(f"not a FAF-Net release state dict: {len(unknown)} unexpected key(s): {shown}")
    return converted
