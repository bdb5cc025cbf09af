"""Progress of long work: a tqdm bar on a terminal, log lines at a steady rate elsewhere.

A batch job (Slurm, nohup, a CI log) has no terminal: a bar there would either vanish or fill
the log with carriage returns. So when standard error is not a terminal, `progress` writes a
line to the project's logger ("fafnet.progress") every `PROGRESS_INTERVAL_S` seconds, saying
what is done of what total, the rate and the time left, and one line when the work ends. The
run logs of train.py and test.py receive these lines (fafnet.io.logs.log_to_file); the
command-line tools print them to standard error.

Bars go to the process's real standard error (`sys.__stderr__`), not to `sys.stderr`: Sacred
replaces the latter with a tee into the run's cout.txt, where a bar's updates would leave
stale lines.
"""
import logging
import os
import sys
import time
from typing import Iterable, Iterator, Optional

from tqdm import tqdm

PROJECT_LOGGER = "fafnet"
PROGRESS_LOGGER = PROJECT_LOGGER + ".progress"
# Seconds between progress lines in a log; FAFNET_PROGRESS_INTERVAL_S overrides it.
PROGRESS_INTERVAL_S = 30.0


def _interval_s() -> float:
    value = os.environ.get("FAFNET_PROGRESS_INTERVAL_S")
    if value is None:
        return PROGRESS_INTERVAL_S
    try:
        interval = float(value)
    except ValueError:
        raise ValueError(f"FAFNET_PROGRESS_INTERVAL_S={value!r} must be a number of seconds") from None
    if not interval >= 0:
        raise ValueError(f"FAFNET_PROGRESS_INTERVAL_S={value!r} must be a number of seconds >= 0")
    return interval


def on_terminal() -> bool:
    stream = sys.__stderr__
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def duration_text(seconds: float) -> str:
    """12.3 -> '12 s', 185 -> '3 min 5 s', 7300 -> '2 h 1 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class LoggedProgress:
    """The part of tqdm's interface the project uses (iteration, `update`, `set_postfix`,
    `close`, a context manager), reporting by log lines instead of a bar."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", unit: str = "it", initial: int = 0,
                 interval_s: Optional[float] = None, logger: Optional[logging.Logger] = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.interval_s = _interval_s() if interval_s is None else interval_s
        self.logger = logger or logging.getLogger(PROGRESS_LOGGER)
        self.started = self.last_line = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LoggedProgress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.closed = True   # the error says what happened; no "done" line
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_line >= self.interval_s and (self.total is None or self.n < self.total):
            self.last_line = now
            self.logger.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """'<desc>: 12/45 chunks (27%), 1.3 chunks/s, about 25 s left'."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        done = self.n - self.initial
        rate = done / elapsed
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self._units(self.total or self.n)}"
        if self.total:
            text += f" ({100.0 * self.n / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s" if rate >= 1 else f", {1 / rate:.3g} s/{self.unit}" if rate else ""
        if self.total and rate:
            text += f", about {duration_text((self.total - self.n) / rate)} left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.monotonic() - self.started
        done = self.n - self.initial
        if done:
            self.logger.info("%s: %d %s done in %s", self.desc, done, self._units(done), duration_text(elapsed))

    def _units(self, count: int) -> str:
        return self.unit if count == 1 or self.unit.endswith("s") else self.unit + "s"


def progress(iterable: Optional[Iterable] = None, log: bool = True, **kwargs):
    """A tqdm bar on a terminal; elsewhere a `LoggedProgress` (log lines at a steady rate),
    or, with `log=False` (work that logs its own progress, such as training steps), nothing.
    Keyword arguments are tqdm's (total, desc, unit, initial, ...)."""
    if on_terminal():
        kwargs.setdefault("mininterval", 1.0)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=sys.__stderr__, **kwargs)
    if not log:
        return tqdm(iterable, disable=True, **kwargs)
    known = {k: kwargs[k] for k in ("total", "desc", "unit", "initial") if k in kwargs}
    return LoggedProgress(iterable, **known)


def log_to_console(level: int = logging.INFO) -> None:
    """For command-line tools: print the project's log records (progress lines among them)
    to standard error, once."""
    logger = logging.getLogger(PROJECT_LOGGER)
    if not any(getattr(h, "_fafnet_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._fafnet_console = True
        logger.addHandler(handler)
    logger.setLevel(level)
