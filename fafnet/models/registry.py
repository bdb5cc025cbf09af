"""Models by name, in the style of torchvision's builders: `build_model(..., name="fafnet")`.

A second model is one new module (its `nn.Module` following fafnet.models.interface and a
builder) plus one `register_model(ModelSpec(...))` line, here or in the code that uses it
before the commands run. The name goes into every run's config (`model`) and every snapshot's
header, and a snapshot is refused by a model of another name.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .factory import FAFNET_OPTIONS, build_fafnet
from .release import convert_release_checkpoint

DEFAULT_MODEL = "fafnet"
NO_PRETRAINED = "none"   # the config's explicit "random initialisation"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    name: what `model=` selects. build(image_size, pretrained_weights, allow_partial_pretrained,
    options) -> the model on the CPU. options: the config options only this model takes, with
    the values its reference run uses (the only values another model accepts). convert_checkpoint:
    a foreign state dict (e.g. the authors' release) -> this model's names; raises ValueError
    when it is not one (None: only this project's state dicts load).
    """
    name: str
    build: Callable[..., nn.Module]
    description: str = ""
    options: Mapping[str, object] = field(default_factory=dict)
    convert_checkpoint: Optional[Callable[[Mapping], Dict]] = None


MODELS: Dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add `spec` under its name (a name already taken is an error)."""
    if spec.name in MODELS and MODELS[spec.name] is not spec:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str, option: str = "model") -> ModelSpec:
    """The registered model `name`, or a ValueError naming `option` and listing the registered ones."""
    if name not in MODELS:
        raise ValueError(f"{option}={name!r} is not a registered model; registered: {', '.join(MODELS)}")
    return MODELS[name]


def model_options(name: str, config: Mapping) -> Dict[str, object]:
    """The options of model `name` taken from `config` (a run's config). An option of another
    model set away from its reference value is an error: it would silently do nothing."""
    own = get_model_spec(name).options
    for other in MODELS.values():
        for option, reference in other.options.items():
            if option not in own and option in config and config[option] != reference:
                raise ValueError(f"config option {option}={config[option]!r} is an option of model "
                                 f"{other.name!r}; model={name!r} does not take it (leave it at {reference!r})")
    return {option: config.get(option, default) for option, default in own.items()}


def build_model(image_size: Sequence[int], device: torch.device, pretrained_weights: Optional[str] = None,
                channels_last: bool = False, allow_partial_pretrained: bool = False, *,
                name: str = DEFAULT_MODEL, options: Optional[Mapping] = None) -> nn.Module:
    """Model `name` for `image_size` [H, W] on `device`, with backbone weights from
    `pretrained_weights` (a path; None or "none": the model's own initialisation), its
    `options` (see `model_options`), optionally with channels-last weights."""
    spec = get_model_spec(name)
    if pretrained_weights == NO_PRETRAINED:
        pretrained_weights = None
    model = spec.build(tuple(image_size), pretrained_weights, allow_partial_pretrained, dict(options or {}))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def model_from_options(options: Mapping, device: torch.device, **given) -> nn.Module:
    """A run's model from its flat options (fafnet.runtime.options): `model` (the name),
    `image_size`, `pretrained_weights`, `pretrained_allow_partial`, `channels_last` and the
    model's own options; `given` replaces any of them (evaluation: no pretrained file under a
    checkpoint's weights)."""
    chosen = {**options, **given}
    name = chosen.get("model", DEFAULT_MODEL)
    return build_model(chosen["image_size"], device, chosen.get("pretrained_weights"),
                       chosen.get("channels_last", False), chosen.get("pretrained_allow_partial", False),
                       name=name, options=model_options(name, chosen))


register_model(ModelSpec("fafnet", build_fafnet, "FAF-Net: ResNet-101 encoder with the ATL threshold head, "
                         "ICM + AFF on the support prototype", FAFNET_OPTIONS, convert_release_checkpoint))
