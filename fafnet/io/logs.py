"""Run logs.

A run's log file receives the records of the run's logger and of the project's logger
("fafnet": progress lines of data loading and evaluation, see fafnet/io/progress.py), so a batch
job's log shows how far long work has come.
"""
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from fafnet.io.progress import PROJECT_LOGGER


@contextmanager
def log_to_file(logger: logging.Logger, path: str) -> Iterator[logging.Handler]:
    """Copy `logger`'s records into `path` for the duration of the block (the handler is
    removed afterwards, so consecutive runs in one process do not write into each other's
    logs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    loggers = [logger, logging.getLogger(PROJECT_LOGGER)]
    previous_levels = [each.level for each in loggers]
    for each in loggers:
        if each.getEffectiveLevel() > logging.INFO:
            # An embedding application (pytest, a notebook) may have set the root to
            # WARNING; the run's log must still get the INFO progress lines.
            each.setLevel(logging.INFO)
        each.addHandler(handler)
    try:
        yield handler
    finally:
        for each, level in zip(loggers, previous_levels):
            each.removeHandler(handler)
            each.setLevel(level)
        handler.close()


def slug(name: str) -> str:
    """'right kidney' -> 'right_kidney': names usable as metric keys and file names."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def error_summary(error: BaseException) -> str:
    """"Type: first line of the message", for a warning that says why a fast path was dropped
    (a compiler's or CUDA's message runs to many lines)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
