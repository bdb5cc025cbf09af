"""The `model` ingredient: the network by its registry name, its initial weights and its own
options (those of FAF-Net; another model declares its own in its `ModelSpec`)."""
from typing import Mapping

from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import booleans, is_number
from fafnet.models.pretrained import default_pretrained_weights
from fafnet.models.registry import DEFAULT_MODEL, get_model_spec, model_options

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


def check_model_rules(options: Mapping) -> None:
    """A registered model, given only its own options (`model_options`)."""
    get_model_spec(options["name"], option="config option model.name")
    model_options(options["name"], options)   # another model's option set: an error naming it


validate_on_assembly(model, CHECKS, check_model_rules)
