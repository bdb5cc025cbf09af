"""The training snapshot format: what a snapshot holds, where it is saved, how it is written
and read. Which file a user's name means and loading it for evaluation: checkpoints.py;
continuing a run: resume.py.

A training run folder holds, in `snapshots/`:

- `latest.pth`: a full snapshot (model, optimiser, scheduler, RNG states, step, config),
  rewritten at every snapshot interval while the run trains; everything resume needs;
- `step_XXXXXXX.pth`: the model weights only (with step, image size and config), one per
  snapshot interval before the end (`keep_snapshots="weights"`, the default), or none
  (`keep_snapshots="none"`);
- `final.pth`: the full snapshot at the last step, written when the run finishes
  (`latest.pth` is then removed: final.pth is the latest).

Every snapshot names its model and the model's options (`model_name`, `model_options`).
Weights alone are about half a full snapshot with SGD momentum, so a run keeps one full file
and the weights of its older steps (docs/outputs.md has the sizes). Snapshots of format v1
(every `step_XXXXXXX.pth` full) still load. Files are read with
`torch.load(weights_only=True)`: no code in a file runs on load.
"""
import errno
import logging
import os
import re
import shutil
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from fafnet.io.atomic import atomic_path
from fafnet.models.registry import DEFAULT_MODEL
from fafnet.runtime.options import KEEP_CHOICES, flat_record
from fafnet.runtime.rng import capture_rng_state

SNAPSHOT_FORMAT = "fafnet-snapshot-v2"
LEGACY_FORMATS = ("fafnet-snapshot-v1",)
FULL, WEIGHTS = "full", "weights"
FOLDER = "snapshots"
LATEST_NAME, FINAL_NAME = "latest.pth", "final.pth"
_STEP_NAME = re.compile(r"^step_(\d+)\.pth$")
log = logging.getLogger("fafnet.snapshots")   # under the project's logger: lands in the run's log
# Options that did not exist in older snapshots, with the value those runs trained with.
OPTIONS_ADDED_LATER = {"optimizer": "sgd", "group": None, "resample_in_plane": None, "model": DEFAULT_MODEL,
                       "pseudo_labels": "supervoxels", "superpixel_min_size": 400, "model_options": {}}


class SnapshotError(ValueError):
    """A snapshot cannot be used for what it was given for (message names option and file)."""


class NonFiniteWeightsError(FloatingPointError):
    """The model's weights hold NaN or infinite values, so they are not saved (training) or
    not evaluated (a checkpoint)."""


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of a state dict (parameters and buffers) that hold
    a NaN or an infinite value."""
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def describe_non_finite(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """'303 of 646 tensors (parameters and buffers) hold NaN or infinite values (first: x)',
    or None when every tensor is finite."""
    bad = non_finite_tensors(state)
    if not bad:
        return None
    return (f"{len(bad)} of {len(state)} tensors (parameters and buffers) hold NaN or infinite "
            f"values (first: {bad[0]})")


def snapshot_folder(run_dir: str) -> str:
    return os.path.join(run_dir, FOLDER)


def step_path(run_dir: str, step: int) -> str:
    """Where training run `run_dir` keeps the weights of `step`."""
    return os.path.join(snapshot_folder(run_dir), f"step_{step:07d}.pth")


def latest_path(run_dir: str) -> str:
    return os.path.join(snapshot_folder(run_dir), LATEST_NAME)


def final_path(run_dir: str) -> str:
    return os.path.join(snapshot_folder(run_dir), FINAL_NAME)


def list_step_snapshots(run_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of every step_XXXXXXX.pth of a training run, by ascending step."""
    folder = snapshot_folder(run_dir)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := _STEP_NAME.match(name))]
    return sorted(found)


def newest_snapshot(run_dir: str) -> Optional[str]:
    """The snapshot a run folder stands for: final.pth, else latest.pth, else the highest
    step file (v1 runs); None when the run has none."""
    for path in (final_path(run_dir), latest_path(run_dir)):
        if os.path.isfile(path):
            return path
    steps = list_step_snapshots(run_dir)
    return steps[-1][1] if steps else None


def run_folder_of(snapshot: str) -> Optional[str]:
    """The training run folder a snapshot file lies in (<run>/snapshots/<file>), or None."""
    folder = os.path.dirname(os.path.abspath(snapshot))
    return os.path.dirname(folder) if os.path.basename(folder) == FOLDER else None


def _config_record(config: Mapping) -> Dict:
    """A plain-JSON copy of a Sacred config (its read-only containers do not pass
    weights-only loading)."""
    import json
    return json.loads(json.dumps(config))


def _save(state: Dict, path: str) -> None:
    """torch.save through `atomic_path`; a full disk is reported as such (torch's own error
    names a C++ source file and a byte offset, not the cause)."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:
        folder = os.path.dirname(os.path.abspath(path))
        if not _disk_full(err, folder):
            raise
        raise OSError(errno.ENOSPC, f"no space left on {folder}: the snapshot {os.path.basename(path)} "
                                    f"was not written ({_free_text(folder)}); the previous snapshot "
                                    f"is intact, free space and resume") from None


# A snapshot write that fails with less than this free on its file system is taken for a full
# disk: torch's writer reports ENOSPC as "unexpected pos" or "file write failed".
_FULL_DISK_MARGIN = 64 << 20


def _disk_full(err: BaseException, folder: str) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    if "No space left" in str(err):
        return True
    if isinstance(err, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < _FULL_DISK_MARGIN
        except OSError:
            return False
    return False


def _free_text(folder: str) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MiB free"
    except OSError:
        return "free space unknown"


class SnapshotWriter:
    """Writes a training run's snapshots in the layout of the module docstring."""

    def __init__(self, run_dir: str, config: Mapping, image_size: Iterable[int],
                 keep: str = "weights", training_data: Optional[Mapping] = None):
        """`training_data`: the run's record of its fold, volumes and files
        (fafnet/runtime/training_data.py), kept in every snapshot for resume and evaluation."""
        if keep not in KEEP_CHOICES:
            raise ValueError(f"keep_snapshots={keep!r} must be one of {KEEP_CHOICES}")
        self.run_dir, self.keep = run_dir, keep
        self.header = {"format": SNAPSHOT_FORMAT, "model_name": config.get("model", DEFAULT_MODEL),
                       "model_options": _config_record(config.get("model_options", {})),
                       "image_size": list(image_size), "config": _config_record(config)}
        if training_data is not None:
            self.header["training_data"] = _config_record(training_data)

    def _weights(self, step: int, model) -> Dict:
        """The weights record of `step`; refuses weights that are not all finite, which
        would overwrite the last good snapshot with a model that predicts nothing."""
        weights = model.state_dict()
        problem = describe_non_finite(weights)
        if problem:
            raise NonFiniteWeightsError(f"step {step}: {problem}; the snapshot was not written")
        return {**self.header, "kind": WEIGHTS, "step": int(step), "model": weights}

    def save_weights(self, step: int, model) -> str:
        """Save the model weights of `step` as step_XXXXXXX.pth (whatever `keep` says);
        returns its path."""
        path = step_path(self.run_dir, step)
        _save(self._weights(step, model), path)
        return path

    def save(self, step: int, model, optimizer, scheduler, final: bool = False, step_file: bool = True) -> str:
        """Save the snapshot of `step`; returns the path of the full snapshot written.
        `step_file=False` writes latest.pth only (the snapshot of an interrupted run, off the
        snapshot interval)."""
        weights = self._weights(step, model)
        if not final and step_file and self.keep == "weights":
            _save(weights, step_path(self.run_dir, step))
        scheduler_state = scheduler.state_dict()
        # A Counter does not pass torch.load(weights_only=True); a plain dict does.
        scheduler_state["milestones"] = dict(scheduler_state["milestones"])
        full = {**weights, "kind": FULL, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state, "rng": capture_rng_state()}
        path = final_path(self.run_dir) if final else latest_path(self.run_dir)
        _save(full, path)
        if final and os.path.exists(latest_path(self.run_dir)):
            os.remove(latest_path(self.run_dir))
        return path


def read_snapshot_file(path: str, option: str) -> Dict:
    """torch.load(weights_only=True) with errors that name the option and the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SnapshotError(f"{option}: {path} does not exist") from None
    except Exception as err:  # corrupt, truncated, foreign or code-carrying files raise many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SnapshotError(f"{option}: {path} cannot be read as a torch snapshot "
                            f"({type(err).__name__}: {reason[:300]})") from None


def is_project_snapshot(state) -> bool:
    return isinstance(state, dict) and state.get("format") in (SNAPSHOT_FORMAT,) + LEGACY_FORMATS


def snapshot_kind(state: Dict) -> str:
    """'full' or 'weights' (v1 snapshots are all full)."""
    return state.get("kind", FULL)


def translate_legacy(saved: Mapping) -> Dict:
    """v1 configs named the setting-2 rule `exclude_rule` ('any' or 'all' = the release's)."""
    saved = dict(saved)
    if "exclude_rule" in saved and "setting2_protocol" not in saved:
        saved["setting2_protocol"] = {"all": "release"}.get(saved["exclude_rule"], saved["exclude_rule"])
    saved.pop("exclude_rule", None)
    return saved


def snapshot_model_name(state: Mapping) -> str:
    """The registry name of the model a project snapshot holds (older snapshots: FAF-Net)."""
    return state.get("model_name") or flat_record(state.get("config") or {}).get("model") or DEFAULT_MODEL


def snapshot_model_options(state: Mapping) -> Dict:
    """The options of the model a project snapshot holds, as recorded (snapshots of 0.5 and
    earlier: FAF-Net's initialisation options from their config; the model's defaults fill in
    the rest when it is built)."""
    if isinstance(state.get("model_options"), dict):
        return dict(state["model_options"])
    return dict(flat_record(state.get("config") or {}).get("model_options") or {})


def saved_training_config(path: str, state, option: str = "checkpoint") -> Dict:
    """The config a project snapshot's run trained with, the options that older snapshots lack
    filled in with the values those runs used. Other files (the authors' release checkpoints)
    carry no config: SnapshotError naming `option` and the file."""
    if not is_project_snapshot(state) or not isinstance(state.get("config"), dict):
        raise SnapshotError(f"{option} {path} is not a training snapshot of this project: it holds no "
                            "saved config saying which dataset and pre-processing it was trained with")
    return {**OPTIONS_ADDED_LATER, **translate_legacy(flat_record(state["config"]))}
