"""Models by name, in torchvision's style: a model module registers its builder beside it,
and the builder's keyword-only arguments are the model's options.

    @register_model("fafnet", description="...", convert_checkpoint=convert_release_checkpoint)
    def fafnet(image_size, pretrained_weights=None, allow_partial_pretrained=False, *,
               icm: bool = True, threshold: Literal["adaptive", "scalar"] = "adaptive") -> FAFNet:

`build_model("fafnet", image_size, options={"icm": False})` builds it. The options a run
gives (`model_options` in config.py) are resolved against the builder's signature once,
before anything is written (`resolve_model_options`): an unknown option or a value of the
wrong type is an error naming it, and the result (every option, defaults filled in) is what
snapshots and results.json record, and what evaluation and `segment` build the model with.
A model that must relate its options (FAF-Net: the AFF needs the ICM) registers a `check`.
"""
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

DEFAULT_MODEL = "fafnet"
NO_PRETRAINED = "none"   # the config's explicit "random initialisation"
OPTIONS_NAME = "model_options"   # the config option that holds a model's own options


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    name: what `model=` selects. builder(image_size, pretrained_weights, allow_partial_pretrained,
    **options) -> the model on the CPU; its keyword-only parameters, each with a default, are
    the model's options. check(options): relations between options (ValueError naming them).
    convert_checkpoint: a foreign state dict (the authors' release) -> this model's names;
    raises ValueError when it is not one (None: only this project's state dicts load).
    image_size_hint: a state dict of this model -> which image sizes it fits, as text for an
    error message, or None when it cannot tell (a plain state dict records no size).
    """
    name: str
    builder: Callable[..., nn.Module]
    description: str = ""
    check: Optional[Callable[[Dict], None]] = None
    convert_checkpoint: Optional[Callable[[Mapping], Dict]] = None
    image_size_hint: Optional[Callable[[Mapping], Optional[str]]] = None

    def option_defaults(self) -> Dict[str, object]:
        """The model's options with their default values, in the builder's order."""
        return {name: parameter.default for name, parameter in _option_parameters(self.builder).items()}

    def resolve_options(self, given: Optional[Mapping] = None) -> Dict[str, object]:
        """Every option of the model: `given` over the defaults. An option the builder does not
        take, or a value its annotation rules out, is a ValueError naming `model_options.<name>`."""
        given = dict(given or {})
        parameters = _option_parameters(self.builder)
        unknown = sorted(set(given) - set(parameters))
        if unknown:
            known = ", ".join(parameters) or "none"
            raise ValueError(f"config option {OPTIONS_NAME}.{unknown[0]}: model {self.name!r} has no option "
                             f"{unknown[0]!r} (its options: {known})")
        for name, value in given.items():
            _check_annotation(f"{OPTIONS_NAME}.{name}", value, parameters[name].annotation)
        options = {**self.option_defaults(), **given}
        if self.check is not None:
            self.check(options)
        return options


def _option_parameters(builder: Callable) -> Dict[str, inspect.Parameter]:
    return {name: parameter for name, parameter in inspect.signature(builder).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY}


def _check_annotation(option: str, value, annotation) -> None:
    """`value` must fit `annotation`: bool, int, float, str, Optional[...] or Literal[...]."""
    if annotation is inspect.Parameter.empty:
        return
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in arguments or isinstance(value, bool) != isinstance(arguments[0], bool):
            raise ValueError(f"config option {option}={value!r} must be one of "
                             f"{', '.join(repr(a) for a in arguments)}")
        return
    if origin is typing.Union:
        if value is None and type(None) in arguments:
            return
        annotation = next(a for a in arguments if a is not type(None))
    fits = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            str: lambda v: isinstance(v, str)}.get(annotation)
    if fits is not None and not fits(value):
        kind = {bool: "True or False", int: "an integer", float: "a finite number", str: "a string"}[annotation]
        raise ValueError(f"config option {option}={value!r} must be {kind}")


MODELS: Dict[str, ModelEntry] = {}


def register_model(name: str, *, description: str = "", check: Optional[Callable[[Dict], None]] = None,
                   convert_checkpoint: Optional[Callable[[Mapping], Dict]] = None,
                   image_size_hint: Optional[Callable[[Mapping], Optional[str]]] = None) -> Callable:
    """Decorator: register the builder it decorates under `name` (a name already taken by another
    builder is an error; see `ModelEntry` for the rest). Returns the builder unchanged."""
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for parameter in _option_parameters(builder).values():
            if parameter.default is parameter.empty:
                raise TypeError(f"model {name!r}: option {parameter.name!r} of its builder has no default")
        entry = ModelEntry(name, builder, description, check, convert_checkpoint, image_size_hint)
        if name in MODELS and MODELS[name].builder is not builder:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = entry
        return builder
    return register


def unregister_model(name: str) -> None:
    """Remove model `name` (tests register throw-away models)."""
    MODELS.pop(name, None)


def get_model(name: str, option: str = "config option model") -> ModelEntry:
    """The registered model `name`, or a ValueError naming `option` and listing the registered ones."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"{option}={name!r} is not a registered model; registered: {', '.join(MODELS)}")
    return MODELS[name]


def resolve_model_options(name: str, given: Optional[Mapping] = None) -> Dict[str, object]:
    """Every option of model `name`, `given` over its defaults (see `ModelEntry.resolve_options`)."""
    return get_model(name).resolve_options(given)


def build_model(name: str, image_size: Sequence[int], *, device: torch.device = torch.device("cpu"),
                pretrained_weights: Optional[str] = None, allow_partial_pretrained: bool = False,
                channels_last: bool = False, options: Optional[Mapping] = None) -> nn.Module:
    """Model `name` for `image_size` [H, W] on `device`, with backbone weights from
    `pretrained_weights` (a path; None or "none": the model's own initialisation) and its
    `options` (resolved against the builder: `resolve_model_options`), optionally with
    channels-last weights."""
    entry = get_model(name)
    if pretrained_weights == NO_PRETRAINED:
        pretrained_weights = None
    model = entry.builder(tuple(image_size), pretrained_weights, allow_partial_pretrained,
                          **entry.resolve_options(options))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
