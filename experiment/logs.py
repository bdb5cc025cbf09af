"""Run logs and progress bars.

Progress bars go to the process's real standard error (`sys.__stderr__`), not to
`sys.stderr`: Sacred replaces the latter with a tee into the run's cout.txt, where a bar's
carriage-return updates would leave a stale line. Bars are also switched off when that
stream is not a terminal (a batch job's log file), so logs hold only the log lines.
"""
import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm progress bar on the terminal only (see the module docstring)."""
    stream = sys.__stderr__
    interactive = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=stream, disable=not interactive, **kwargs)


@contextmanager
def log_to_file(logger: logging.Logger, path: str) -> Iterator[logging.Handler]:
    """Copy `logger`'s records into `path` for the duration of the block (the handler is
    removed afterwards, so consecutive runs in one process do not write into each other's
    logs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        # An embedding application (pytest, a notebook) may have set the root to WARNING;
        # the run's log must still get the INFO progress lines.
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


def slug(name: str) -> str:
    """'right kidney' -> 'right_kidney': names usable as metric keys and file names."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def error_summary(error: BaseException) -> str:
    """"Type: first line of the message", for a warning that says why a fast path was dropped
    (a compiler's or CUDA's message runs to many lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
