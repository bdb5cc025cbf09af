"""The `model` ingredient: the network by its registry name, its initial weights and its own
options (those of FAF-Net; another model declares its own in its `ModelSpec`)."""
from typing import Mapping

from fafnet.cli.ingredients.base import new_ingredient
from fafnet.cli.ingredients.checks import booleans, check_options, is_number
from fafnet.models.pretrained import default_pretrained_weights
from fafnet.models.registry import DEFAULT_MODEL, MODELS, model_options

model = new_ingredient("model")


def model_config():
    """The model's options (a Sacred config scope)."""
    name = DEFAULT_MODEL            # the network, by its registry name (fafnet.models.registry)
    # A torchvision ResNet-101 or DeepLabV3-ResNet-101 file; by default the one found in
    # torchvision's cache. "none": random initialisation (allowed on real datasets only so).
    pretrained_weights = default_pretrained_weights()
    # Accept a pretrained file that lacks some backbone tensors the encoder runs (conv1, bn1,
    # layer1-3; they keep their initialisation and a warning lists them). False: an error.
    pretrained_allow_partial = False
    # A random start (no pretrained weights; the demo): every bottleneck's last BatchNorm weight
    # at 0 so each residual block starts as the identity (False: the release's initialisation).
    zero_init_residual = False
    # The threshold head's output conv starts at this times the release's initial weights
    # (1.0: the release; the demo's random start uses 0.05, see fafnet/models/factory.py).
    threshold_head_init_scale = 1.0


model.config(model_config)

CHECKS = {
    "pretrained_weights": (lambda v: v is None or isinstance(v, str), "must be a path or 'none'"),
    "threshold_head_init_scale": (lambda v: is_number(v) and v > 0,
                                  "must be a number > 0, finite (1.0: the release's initialisation)"),
    **booleans("pretrained_allow_partial", "zero_init_residual"),
}


def check_model_options(options: Mapping) -> None:
    """A registered model, given only its own options (`model_options`), each value valid."""
    if options["name"] not in MODELS:
        raise ValueError(f"config option model.name={options['name']!r} is not a registered model; "
                         f"registered: {', '.join(MODELS)}")
    model_options(options["name"], options)   # another model's option set: an error naming it
    check_options("model", options, CHECKS)


@model.config_hook
def _validate(config, command_name, logger):
    check_model_options(config["model"])
    return {}
