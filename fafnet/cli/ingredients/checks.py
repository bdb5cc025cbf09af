"""The value rules of the options: predicates, and one check of a group's options against them.

Each ingredient (and each experiment's own options) declares a table ``option -> (predicate,
what a good value is)``; `check_options` applies it once, when the config is assembled and
before anything is written, with an error naming the option by its path."""
import math
from typing import Callable, Dict, Mapping, Tuple

Check = Tuple[Callable[[object], bool], str]


def check_options(ingredient: str, options: Mapping, checks: Dict[str, Check]) -> None:
    """Raise a ValueError naming the first option of `options` (the config of `ingredient`;
    "" for an experiment's own) whose value breaks its rule."""
    for name, (ok, what) in checks.items():
        if name in options and not ok(options[name]):
            path = f"{ingredient}.{name}" if ingredient else name
            raise ValueError(f"config option {path}={options[name]!r} {what}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float: inf passes `v >= 0` and then poisons every weight."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value) -> bool:
    return is_int(value) and value >= 1


def size_ok(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(positive_int(x) for x in value)


POSITIVE: Check = (positive_int, "must be an integer >= 1")
NON_NEGATIVE_INT: Check = (lambda v: is_int(v) and v >= 0, "must be an integer >= 0")
NON_NEGATIVE_NUMBER: Check = (lambda v: is_number(v) and v >= 0, "must be a finite number >= 0")
FOLDER: Check = (lambda v: isinstance(v, str) and v != "", "must be a folder path (a string)")
BOOLEAN: Check = (lambda v: isinstance(v, bool), "must be True or False")


def booleans(*names: str) -> Dict[str, Check]:
    return {name: BOOLEAN for name in names}
