"""A run's options by name: the flat view of its Sacred config, and constructors filled from it.

The experiments group their options into Sacred ingredients (`fafnet/cli/ingredients/`), so a
run's config.json is nested: ``{"dataset": {"name": "SABS", "eval_fold": 0, ...}, "model":
{...}, "seed": 2025, ...}``. Every option has one name across the groups, so the run's
*options* are that config flattened: ``{"dataset": "SABS", "eval_fold": 0, ..., "seed": 2025}``.
An ingredient's ``name`` option takes the ingredient's own name (``dataset.name`` is the option
``dataset``, ``model.name`` is ``model``). Snapshots, results and the resume checks keep this
flat record, so it reads the same for runs recorded by 0.4 and earlier (flat) and since 0.5 (grouped).
"""
import inspect
from typing import Callable, Dict, Mapping

# The ingredients (option groups) of train.py and test.py, by their config key.
INGREDIENTS = ("dataset", "episodes", "model", "optimisation", "runtime", "evaluation")
# An ingredient's option of this name is the option named after the ingredient.
NAME_OPTION = "name"


def flat_options(config: Mapping) -> Dict:
    """The options of a run's config (nested by ingredient, or flat as 0.4 and earlier recorded it) as
    one flat dict (less Sacred's `__doc__` entries). Two groups defining one option name is an
    error: names must stay unique."""
    flat, owner = {}, {}
    for key, value in config.items():
        if key.startswith("__"):   # Sacred's `__doc__` of a config scope: not an option
            continue
        if key in INGREDIENTS and isinstance(value, Mapping):
            entries = [(key if name == NAME_OPTION else name, item) for name, item in value.items()]
        else:
            key, entries = "", [(key, value)]
        for name, item in entries:
            if name.startswith("__"):
                continue
            if name in flat:
                raise ValueError(f"config option {name!r} is defined by {owner[name] or 'the experiment'} "
                                 f"and by {key or 'the experiment'}: option names must be unique")
            flat[name], owner[name] = item, key
    return flat


def option_path(ingredient: str, name: str) -> str:
    """The dotted path of option `name` of `ingredient` ("" for the experiment's own options):
    what print_config shows and what the command line accepts besides the flat name."""
    if not ingredient:
        return name
    return f"{ingredient}.{NAME_OPTION if name == ingredient else name}"


def call_with_options(function: Callable, options: Mapping, **given):
    """Call `function` with each parameter it declares taken from `options` by its name (the
    rule of Sacred's captured functions), `given` arguments first. A parameter without a default
    that neither provides is an error naming it."""
    arguments = dict(given)
    for name, parameter in inspect.signature(function).parameters.items():
        if name in arguments or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in options:
            arguments[name] = options[name]
        elif parameter.default is parameter.empty:
            raise TypeError(f"{getattr(function, '__qualname__', function)} needs option {name!r}, "
                            f"which the run's options do not have")
    return function(**arguments)
