"""The name a command was started with, for its usage line and its one-line errors."""
import os
import sys

# argv[0] values that say nothing about the command (python -c, python -m <package>).
_UNINFORMATIVE = ("", "-c", "-m", "__main__.py")


def program_name(default: str) -> str:
    """The basename of sys.argv[0] (fafnet-segment, segment.py, utils.py); `default` when it
    says nothing (python -c, python -m: __main__.py)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return default if name in _UNINFORMATIVE else name
