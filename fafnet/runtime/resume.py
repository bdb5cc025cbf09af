"""Continuing a training run from its full snapshot: which snapshot, whether it was trained
with this run's options, and restoring every state (model, optimiser, scheduler, RNGs)."""
import os
from collections import Counter
from typing import Dict, FrozenSet, Iterable, List, Mapping, Tuple

from fafnet.io.atomic import remove_stale_temporaries
from fafnet.runtime.checkpoints import resolve_checkpoint
from fafnet.runtime.options import flat_record
from fafnet.runtime.rng import restore_rng_state
from fafnet.runtime.runs import RUNNING, run_status
from fafnet.runtime.snapshots import (FULL, FINAL_NAME, LATEST_NAME, OPTIONS_ADDED_LATER, SNAPSHOT_FORMAT,
                                      SnapshotError, is_project_snapshot, read_snapshot_file, run_folder_of,
                                      snapshot_folder, snapshot_kind, translate_legacy)

def load_for_resume(resume: str) -> Tuple[str, Dict]:
    """(path, state) of the full snapshot to resume from: a snapshot file or a training run
    folder (its final.pth or latest.pth). Refuses a run that is still alive; removes the
    temporary files a killed snapshot write left behind. Raises SnapshotError naming
    `resume=` and the file."""
    option = "resume"
    if os.path.isdir(resume):
        _refuse_running(resume, resume)
        remove_stale_temporaries(snapshot_folder(resume))
    try:
        path = resolve_checkpoint(resume, option)
    except FileNotFoundError as err:
        raise SnapshotError(str(err)) from None
    owner = run_folder_of(path)
    if os.path.isdir(resume) and owner is not None and not os.path.samefile(owner, resume):
        _refuse_running(resume, owner)   # resume followed the run into its continuation
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    state = read_snapshot_file(path, f"{option}={resume!r}")
    if not is_project_snapshot(state):
        raise SnapshotError(f"resume={resume!r}: {path} is not a training snapshot of this project "
                            f"(no format {SNAPSHOT_FORMAT!r}); to start from other weights use "
                            f"pretrained_weights")
    if snapshot_kind(state) != FULL:
        raise SnapshotError(f"resume={resume!r}: {path} holds the model weights only (an older "
                            f"snapshot); resume from the run's {LATEST_NAME} or {FINAL_NAME}")
    missing = [k for k in ("step", "config", "model", "optimizer", "scheduler", "rng", "image_size")
               if k not in state]
    if missing:
        raise SnapshotError(f"resume={resume!r}: {path} lacks {missing}; it is damaged")
    return path, state


def _refuse_running(resume: str, run_dir: str) -> None:
    if run_status(run_dir) == RUNNING:
        where = "that run" if run_dir == resume else f"its continuation {run_dir}"
        raise SnapshotError(f"resume={resume!r}: {where} is still running (its run.json has a "
                            f"recent heartbeat); stop it first")


def resume_differences(saved: Mapping, config: Mapping, free_options: FrozenSet[str]) -> List[str]:
    """The options (all but `free_options`) on which a snapshot's config and this run's
    config differ, as 'name: snapshot X vs now Y' lines. Options missing from older
    snapshots count with the value those runs used."""
    saved = {**OPTIONS_ADDED_LATER, **translate_legacy(flat_record(saved))}
    config = flat_record(config)   # without Sacred's `__doc__` of a named config, which snapshots drop
    return [f"{name}: snapshot {saved.get(name)!r} vs now {config[name]!r}"
            for name in sorted(config) if name not in free_options and saved.get(name) != config[name]]


def restore_training_state(state: Dict, model, optimizer, scheduler, milestones: Iterable[int]) -> int:
    """Load model, optimiser and scheduler states; the scheduler's milestones follow this
    run's config (n_steps may have been raised to continue). Returns the step."""
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.milestones = Counter(milestones)
    restore_rng_state(state["rng"])
    return int(state["step"])
