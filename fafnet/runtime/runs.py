"""Sacred run folders (`<runs_dir>/<train|test>/<id>/`): their status, including runs that
died without saying so, and what a run does at its start so that its status stays true
(`record_process`, `sigterm_interrupts`).

Sacred marks a run RUNNING when it starts and COMPLETED, FAILED or INTERRUPTED when it ends;
a run killed with SIGKILL (or by a lost node) stays RUNNING in its run.json forever. While a
run lives, Sacred rewrites its heartbeat every 10 s and this project records the process id
in the run's info, so a RUNNING run whose process is gone (same host) or whose heartbeat is
older than `DEAD_AFTER_S` is reported as DIED. (Sacred's FileStorageObserver keeps a run's
info, the process id among it, in info.json beside run.json; `record_process` writes it at
the start, before the first heartbeat.) A run stopped with SIGTERM inside `sigterm_interrupts`
ends as INTERRUPTED, like one stopped with Ctrl-C; inside `deferred_interrupts` (the training
loop) either signal is acted on at the end of the step under way, so that step can be saved.

A resumed training run is recorded in a new run folder: `record_continuation` writes
continued.json into the folder of the run it continues, `continuation`/`continuations`
follow that link forwards and `resumed_from` (the new run's data_manifest.json) backwards, so
that the tools can treat the folders as one run.
"""
import datetime
import json
import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

from fafnet.io.atomic import atomic_write_json

COMPLETED, RUNNING, DIED, INTERRUPTED = "COMPLETED", "RUNNING", "DIED", "INTERRUPTED"
DEAD_AFTER_S = 300.0


def record_process(run_dir: str, info: Dict) -> None:
    """Write the run's info.json (with its "pid") now: Sacred writes it only at its first
    heartbeat, 10 s into the run, and a run killed before that would otherwise look alive
    for DEAD_AFTER_S. Sacred's heartbeats then rewrite it with the same entries and more."""
    atomic_write_json(info, os.path.join(run_dir, "info.json"))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's cancel, `kill`), raised where the main thread is: Sacred
    records it as INTERRUPTED, as it does Ctrl-C, so the run can be resumed at once."""
    STATUS = INTERRUPTED


def _raise_terminated(signum, frame):
    raise Terminated("terminated by SIGTERM")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` instead of ending the process on the
    spot (which leaves run.json saying RUNNING). Only the main thread can set handlers; in
    another thread the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_run_json(run_dir: str) -> Optional[Dict]:
    """A run folder's run.json, or None when missing or unreadable (being written)."""
    return _read_json(os.path.join(run_dir, "run.json"))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _heartbeat_age_s(entry: Dict, now: Optional[datetime.datetime]) -> Optional[float]:
    stamp = entry.get("heartbeat") or entry.get("start_time")
    if not stamp:
        return None
    try:
        beat = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    now = now or datetime.datetime.utcnow()  # Sacred writes naive UTC times
    return (now - beat).total_seconds()


def run_status(run_dir: str, now: Optional[datetime.datetime] = None) -> Optional[str]:
    """The run's status as Sacred recorded it, with RUNNING turned into DIED when the run's
    process is gone or its heartbeat stopped; None when the folder has no run.json."""
    entry = read_run_json(run_dir)
    if entry is None:
        return None
    status = entry.get("status")
    if status != RUNNING:
        return status
    pid = (_read_json(os.path.join(run_dir, "info.json")) or {}).get("pid")
    hostname = (entry.get("host") or {}).get("hostname")
    if pid is not None and hostname == socket.gethostname() and not _process_alive(int(pid)):
        return DIED
    age = _heartbeat_age_s(entry, now)
    if age is not None and age > DEAD_AFTER_S:
        return DIED
    return RUNNING


def list_runs(folder: str) -> List[Tuple[int, str]]:
    """(id, path) of the Sacred run folders directly in `folder`, by id."""
    if not os.path.isdir(folder):
        return []
    return sorted((int(name), os.path.join(folder, name)) for name in os.listdir(folder)
                  if name.isdigit() and os.path.isdir(os.path.join(folder, name)))


# ----------------------------------------------------------------------------- stopping a training run

class StopRequest:
    """A Ctrl-C or SIGTERM received inside `deferred_interrupts`, acted on at the end of the
    current training step."""

    def __init__(self):
        self.signum: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupt(self, signum: Optional[int] = None) -> KeyboardInterrupt:
        """The exception that ends the run: `Terminated` for SIGTERM, else KeyboardInterrupt."""
        signum = self.signum if signum is None else signum
        return Terminated("terminated by SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()


def _defer(stop: StopRequest):
    def handle(signum, frame):
        if stop.requested:   # the second signal: stop at once, the step unfinished
            raise stop.interrupt(signum)
        stop.signum = signum
        _tell(f"\n{signal.Signals(signum).name} received: stopping after this training step and saving it "
              f"(send it again to stop at once, without saving)\n")
    return handle


def _tell(text: str) -> None:
    """Write to stderr's file descriptor (safe in a signal handler, unlike print or logging)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


@contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded `StopRequest` instead of raising
    (the training loop checks it after each step, saves that step and ends the run); a
    second signal raises at once (`StopRequest.interrupt`). Only the main thread can set
    handlers; in another thread the block runs with the handlers it has."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handler = _defer(stop)
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# ----------------------------------------------------------------------------- resumed runs

# Written into a run folder when another run resumes from one of its snapshots: the run goes
# on in that folder (its data_manifest.json's "resume" names this one).
CONTINUATION_NAME = "continued.json"
DATA_MANIFEST_NAME = "data_manifest.json"   # fafnet.runtime.training_data's, read here


def record_continuation(run_dir: str, continued_in: str, snapshot: str, step: int) -> str:
    """Write `run_dir`/continued.json (atomically): the run resumed from `snapshot` (step
    `step`) in the run folder `continued_in`, by absolute path and relative to `run_dir`.
    A later resume of the same run replaces it. Returns its path."""
    path = os.path.join(run_dir, CONTINUATION_NAME)
    atomic_write_json({"continued_in": os.path.abspath(continued_in),
                       "relative": os.path.relpath(os.path.abspath(continued_in), os.path.abspath(run_dir)),
                       "from_snapshot": os.path.abspath(snapshot), "from_step": int(step),
                       "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, path)
    return path


def continuation(run_dir: str) -> Optional[str]:
    """The run folder that continued `run_dir` (a run resumed from one of its snapshots), or
    None. The recorded relative path is tried first, so a moved runs folder still links."""
    record = _read_json(os.path.join(run_dir, CONTINUATION_NAME)) or {}
    for candidate in (os.path.join(run_dir, record.get("relative") or ""), record.get("continued_in")):
        if record and candidate and os.path.isdir(candidate) and candidate.rstrip(os.sep) != run_dir.rstrip(os.sep):
            return os.path.normpath(candidate)
    return None


def continuations(run_dir: str) -> List[str]:
    """The run folders that carry `run_dir` on, in order (a run continued, its continuation
    continued, ...); empty when it was never resumed."""
    chain, seen = [], {os.path.realpath(run_dir)}
    following = continuation(run_dir)
    while following is not None and os.path.realpath(following) not in seen:
        chain.append(following)
        seen.add(os.path.realpath(following))
        following = continuation(following)
    return chain


def resumed_from(run_dir: str) -> Optional[str]:
    """The run folder a resumed run continues (its data_manifest.json's "resume" record), or
    None (not resumed, or resumed from a snapshot file outside a run folder)."""
    record = (_read_json(os.path.join(run_dir, DATA_MANIFEST_NAME)) or {}).get("resume") or {}
    return record.get("run")
