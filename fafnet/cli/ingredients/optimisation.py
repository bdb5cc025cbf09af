"""The `optimisation` ingredient (train.py): optimiser, learning-rate schedule, length of
training. The defaults are the authors' scripts: 42000 steps of SGD (lr 1e-3, momentum 0.9,
weight decay 5e-4), lr x0.98 every 3000 steps."""
from typing import Optional

from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import NON_NEGATIVE_NUMBER, POSITIVE, is_number, positive_int
from fafnet.training.loop import OPTIMIZERS, optimizer_choices

optimisation = new_ingredient("optimisation")


def release_milestones(lr_step_size, n_steps) -> Optional[list]:
    """The release's milestones lr_step_size, 2 lr_step_size, ... before n_steps; None when
    either is not an integer >= 1 (validation then names that option: Sacred computes the
    config scopes before any check can run)."""
    if not (positive_int(lr_step_size) and positive_int(n_steps)):
        return None
    return list(range(lr_step_size, n_steps, lr_step_size))


def optimisation_options():
    """The optimiser and its schedule (a Sacred config scope)."""
    n_steps = 42000
    optimizer = "sgd"               # "sgd" (release) or "adam" (not in the release; see README)
    lr = 1e-3
    momentum = 0.9                  # SGD only
    weight_decay = 5e-4
    lr_step_size = 3000             # lr *= lr_gamma every this many steps ...
    lr_gamma = 0.98
    lr_milestones = release_milestones(lr_step_size, n_steps)  # ... at these steps
    grad_clip_norm = None           # clip the total gradient norm to this (None: release, off)


optimisation.config(optimisation_options)

CHECKS = {
    "n_steps": POSITIVE, "lr_step_size": POSITIVE,
    "optimizer": (lambda v: v in OPTIMIZERS, f"must be {optimizer_choices()}"),
    "lr": NON_NEGATIVE_NUMBER, "weight_decay": NON_NEGATIVE_NUMBER, "momentum": NON_NEGATIVE_NUMBER,
    "lr_gamma": NON_NEGATIVE_NUMBER,
    "lr_milestones": (lambda v: isinstance(v, (list, tuple)) and all(positive_int(m) for m in v),
                      "must be a list of positive step numbers"),
    "grad_clip_norm": (lambda v: v is None or (is_number(v) and v > 0), "must be None or a number > 0, finite"),
}

validate_on_assembly(optimisation, CHECKS)
