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
ends as INTERRUPTED, like one stopped with Ctrl-C.
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
