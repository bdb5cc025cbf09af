"""How the option groups are made: Sacred ingredients that scan nothing when they are created."""
import sys
from typing import Sequence

from sacred import SETTINGS, Ingredient


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
