"""How the option groups are made: Sacred ingredients that scan nothing when they are created,
and that check their options once, when their config is assembled."""
import sys
from typing import Callable, Mapping, Optional, Sequence

from sacred import SETTINGS, Ingredient

from fafnet.cli.ingredients.checks import Check, check_options


def new_ingredient(path: str, ingredients: Sequence[Ingredient] = ()) -> Ingredient:
    """A Sacred ingredient named `path` that gathers no sources, dependencies or git state of
    its own.

    Sacred lets every ingredient scan the imported modules when it is created; with the "sys"
    discovery that fafnet.cli.config sets, each scan cost about a second of every command's
    start-up and found nothing new: the experiment that includes the ingredients scans every
    imported module (these included) once, and its run.json lists them all."""
    caller_globals = sys._getframe(1).f_globals   # Sacred's own inspect.stack() reads every frame's source
    saved = SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES
    SETTINGS.DISCOVER_SOURCES = SETTINGS.DISCOVER_DEPENDENCIES = "none"
    try:
        return Ingredient(path, ingredients=list(ingredients), _caller_globals=caller_globals, save_git_info=False)
    finally:
        SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES = saved


def validate_on_assembly(ingredient: Ingredient, checks: Mapping[str, Check],
                         rules: Optional[Callable[[Mapping], None]] = None) -> None:
    """Check `ingredient`'s options once its config is assembled, before a run exists (a
    Sacred config hook): each option against its entry of `checks`, then `rules(options)`, the
    rules that relate several options or ask a registry. An error names the option by path."""
    def validate(config, command_name, logger):   # the signature Sacred requires of a hook
        options = config[ingredient.path]
        check_options(ingredient.path, options, checks)
        if rules is not None:
            rules(options)
        return {}

    ingredient.config_hook(validate)
