"""The training snapshot format: what a snapshot holds, where it is saved, how it is found,
validated and loaded (for resume and for evaluation).

A training run folder holds, in `snapshots/`:

- `latest.pth`: a full snapshot (model, optimiser, scheduler, RNG states, step, config),
  rewritten at every snapshot interval while the run trains; everything resume needs;
- `step_XXXXXXX.pth`: the model weights only (with step, image size and config), one per
  snapshot interval before the end (`keep_snapshots="weights"`, the default), or none
  (`keep_snapshots="none"`);
- `final.pth`: the full snapshot at the last step, written when the run finishes
  (`latest.pth` is then removed: final.pth is the latest).

A full snapshot of the 257 x 257 model with SGD momentum is about 0.5 GB and weights alone
about half of it, so a 42000-step run keeps 6 weight files and one full file instead of
seven full ones. Snapshots of format v1 (every `step_XXXXXXX.pth` full) still load.

Files are read with `torch.load(weights_only=True)`: no code in a file runs on load.
"""
import errno
import logging
import os
import re
import shutil
from collections import Counter
from typing import Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch

from fafnet.io.atomic import atomic_path, remove_stale_temporaries
from fafnet.models.registry import DEFAULT_MODEL, get_model
from fafnet.runtime.options import KEEP_CHOICES, flat_record
from fafnet.runtime.rng import capture_rng_state, restore_rng_state
from fafnet.runtime.runs import COMPLETED, RUNNING, continuations, list_runs, run_status

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


# ----------------------------------------------------------------------------- paths


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


def run_snapshot(run_dir: str, option: str = "checkpoint") -> Optional[str]:
    """The newest snapshot of the run a training run folder stands for: when the run was
    resumed in another folder (fafnet.runtime.runs.continuations), the newest snapshot of the
    last continuation that has one (logged), else `newest_snapshot(run_dir)`."""
    for following in reversed(continuations(run_dir)):
        found = newest_snapshot(following)
        if found is not None:
            log.info("%s=%s: that run was resumed and continued in %s; using its newest snapshot %s",
                     option, run_dir, following, found)
            return found
    return newest_snapshot(run_dir)


def resolve_checkpoint(path: str, option: str = "checkpoint", wanted: Optional[Mapping] = None) -> str:
    """Turn what a user names as a checkpoint into a file path.

    Accepts a file; a training run folder (its newest snapshot, see `newest_snapshot`, or,
    when the run was resumed, its continuation's: `run_snapshot`); or a
    folder of Sacred runs such as ``runs/.../train``: the newest snapshot of its
    highest-numbered COMPLETED run whose config.json agrees with `wanted` (option -> value,
    e.g. the evaluated dataset and fold; None: any run). A folder without such a run is an
    error listing the runs found.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{option}={path!r}: no such file or folder")
    own = run_snapshot(path, option)
    if own is not None:
        return own
    found = []
    for run_id, run_dir in reversed(list_runs(path)):
        status, config = run_status(run_dir), _run_config(run_dir)
        if status == COMPLETED and newest_snapshot(run_dir) and _agrees(config, wanted):
            return newest_snapshot(run_dir)
        found.append(f"run {run_id} ({_describe_run(config, wanted)}{status or 'no run.json'})")
    if wanted is None:
        raise FileNotFoundError(f"{option}={path!r}: no snapshots/{FINAL_NAME}, {LATEST_NAME} or "
                                f"step_*.pth in it and no completed training run below it")
    wish = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
    raise FileNotFoundError(f"{option}={path!r}: no completed training run with {wish} in it; found: "
                            + ("; ".join(found) if found else "no run folders"))


def _run_config(run_dir: str) -> Optional[Dict]:
    """A run folder's options (its Sacred config.json; 0.5's grouped ones flattened), or None."""
    import json
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            return flat_record(json.load(f))
    except (OSError, ValueError, AttributeError):
        return None


def _agrees(config: Optional[Mapping], wanted: Optional[Mapping]) -> bool:
    if wanted is None:
        return True
    return config is not None and all(config.get(k, OPTIONS_ADDED_LATER.get(k)) == v for k, v in wanted.items())


def _describe_run(config: Optional[Mapping], wanted: Optional[Mapping]) -> str:
    if wanted is None:
        return ""
    if config is None:
        return "no config.json, "
    return "".join(f"{k}={config.get(k, OPTIONS_ADDED_LATER.get(k))!r}, " for k in wanted)


# ----------------------------------------------------------------------------- saving


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


# ----------------------------------------------------------------------------- loading


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


def unfinished_run_warning(path: str, state) -> Optional[str]:
    """A warning when the snapshot `path` (contents `state`) is the latest.pth of a training
    run that did not finish (interrupted, failed, killed or still running): its weights are
    those of the step it reached, not a trained model's. None otherwise (final.pth, a step
    file chosen by name, a file outside a run folder)."""
    if os.path.basename(path) != LATEST_NAME or not isinstance(state, dict):
        return None
    run_dir = run_folder_of(path)
    status = run_status(run_dir) if run_dir else None
    if status == COMPLETED:
        return None
    n_steps = flat_record(state.get("config") or {}).get("n_steps")
    steps = f"step {state.get('step')} of n_steps={n_steps}" if n_steps else f"step {state.get('step')}"
    if status == RUNNING:
        what, then = "is still training", "; evaluate its final.pth when it has finished"
    else:
        what = f"never finished (status {status or 'unknown'})"
        then = f"; resume={run_dir} completes it" if run_dir else ""
    return (f"checkpoint {path} is the latest snapshot of a training run that {what}: these are the "
            f"weights of {steps}, not of the finished run{then}")


def resume_differences(saved: Mapping, config: Mapping, free_options: FrozenSet[str]) -> List[str]:
    """The options (all but `free_options`) on which a snapshot's config and this run's
    config differ, as 'name: snapshot X vs now Y' lines. Options missing from older
    snapshots count with the value those runs used."""
    saved = {**OPTIONS_ADDED_LATER, **_translate_legacy(flat_record(saved))}
    config = flat_record(config)   # without Sacred's `__doc__` of a named config, which snapshots drop
    return [f"{name}: snapshot {saved.get(name)!r} vs now {config[name]!r}"
            for name in sorted(config) if name not in free_options and saved.get(name) != config[name]]


def _translate_legacy(saved: Mapping) -> Dict:
    """v1 configs named the setting-2 rule `exclude_rule` ('any' or 'all' = the release's)."""
    saved = dict(saved)
    if "exclude_rule" in saved and "setting2_protocol" not in saved:
        saved["setting2_protocol"] = {"all": "release"}.get(saved["exclude_rule"], saved["exclude_rule"])
    saved.pop("exclude_rule", None)
    return saved


def restore_training_state(state: Dict, model, optimizer, scheduler, milestones: Iterable[int]) -> int:
    """Load model, optimiser and scheduler states; the scheduler's milestones follow this
    run's config (n_steps may have been raised to continue). Returns the step."""
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.milestones = Counter(milestones)
    restore_rng_state(state["rng"])
    return int(state["step"])


class LoadedCheckpoint(NamedTuple):
    """What evaluation knows about the weights it loaded."""
    path: str
    step: Optional[int]                 # training step (None: release checkpoint, plain state dict)
    config: Optional[Dict]              # the training run's config
    training_data: Optional[Dict]       # its fold, volumes and files (fafnet/runtime/training_data.py)


def load_for_evaluation(model, checkpoint: str, image_size: Iterable[int],
                        wanted: Optional[Mapping] = None, model_name: str = DEFAULT_MODEL) -> LoadedCheckpoint:
    """Load weights into `model` (strict) from a snapshot of this project (full or weights
    only), a training run folder, a folder of training runs (the newest completed run whose
    config agrees with `wanted`, see `resolve_checkpoint`), or a checkpoint of the authors'
    release (recognised by its key names and converted). Weights of another model
    (`model_name`, the registry's name of `model`) or image size, or with NaN or infinite
    values, are refused naming the file.
    """
    path, state = read_checkpoint(checkpoint, wanted=wanted)
    return load_checkpoint_state(model, path, state, image_size, model_name)


def read_checkpoint(checkpoint: str, option: str = "checkpoint",
                    wanted: Optional[Mapping] = None) -> Tuple[str, Dict]:
    """(path, contents) of what a user names as a checkpoint (`resolve_checkpoint`); errors
    are SnapshotErrors naming `option` ("checkpoint", segment.py's "--checkpoint")."""
    try:
        path = resolve_checkpoint(checkpoint, option, wanted)
    except FileNotFoundError as err:
        raise SnapshotError(str(err)) from None
    return path, read_snapshot_file(path, f"{option}={checkpoint!r}")


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


def checkpoint_model(path: str, state, model: str, model_options: Mapping,
                     option: str = "checkpoint") -> Tuple[str, Dict]:
    """(registry name, every option) of the model to build for the checkpoint `path` with
    contents `state`: a project snapshot's own model and options (`model` and the given
    `model_options` must agree with them: a different value is an error, not an override); for
    a plain state dict (the authors' release), `model` with `model_options`."""
    from fafnet.models.registry import resolve_model_options

    if not is_project_snapshot(state):
        return model, resolve_model_options(model, model_options)
    name = snapshot_model_name(state)
    if name != model:
        raise SnapshotError(f"{option} {path} holds weights of model {name!r}, not of model={model!r}; "
                            f"evaluate it with model={name}")
    saved = resolve_model_options(name, snapshot_model_options(state))
    for key, value in model_options.items():
        if key in saved and saved[key] != value:
            raise SnapshotError(f"config option model_options.{key}={value!r}: {path} was trained with "
                                f"{key}={saved[key]!r}, and a checkpoint is evaluated with its own model "
                                f"options; leave model_options.{key} out")
    resolve_model_options(name, model_options)   # an option the model does not have: an error naming it
    return name, saved


def load_checkpoint_state(model, path: str, state, image_size: Iterable[int],
                          model_name: str = DEFAULT_MODEL) -> LoadedCheckpoint:
    """The second half of `load_for_evaluation`: load the contents `state` of the file `path`
    (`read_checkpoint`) into `model`, the registry's model `model_name`."""
    image_size = list(image_size)
    loaded = LoadedCheckpoint(path, None, None, None)
    if is_project_snapshot(state):
        saved_model = snapshot_model_name(state)
        if saved_model != model_name:
            raise SnapshotError(f"checkpoint {path} holds weights of model {saved_model!r}, not of "
                                f"model={model_name!r}; evaluate it with model={saved_model}")
        if list(state["image_size"]) != image_size:
            resampled = flat_record(state.get("config") or {}).get("resample_in_plane")
            option = f"resample_in_plane={list(resampled)}" if resampled else f"image_size={state['image_size']}"
            raise SnapshotError(f"checkpoint {path} was trained with image_size={state['image_size']}"
                                + (f" (resample_in_plane={list(resampled)})" if resampled else "")
                                + f"; evaluate it with {option}")
        weights = state["model"]
        loaded = LoadedCheckpoint(path, int(state["step"]), flat_record(state.get("config") or {}),
                                  state.get("training_data"))
    else:
        weights = _plain_weights(state, model, path, image_size, model_name)
    _load_fitting(model, weights, path, image_size, model_name)
    problem = describe_non_finite(model.state_dict())
    if problem:
        raise NonFiniteWeightsError(f"checkpoint {path}: {problem}; these weights cannot be evaluated")
    return loaded


def _plain_weights(state, model, path: str, image_size: List[int], model_name: str) -> Dict:
    """This project's names for a plain state dict (ours, or converted by the model's
    `convert_checkpoint`: FAF-Net's converts the authors' release)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SnapshotError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    if set(state) == set(model.state_dict()):
        return state
    convert = get_model(model_name).convert_checkpoint
    if convert is None:
        raise SnapshotError(f"checkpoint {path}: not a state dict of model={model_name!r} (its keys "
                            f"differ) and that model converts no other checkpoints")
    try:
        return convert(state)
    except ValueError as err:
        raise SnapshotError(f"checkpoint {path}: neither this project's snapshot nor a loadable release "
                            f"checkpoint for image_size={image_size}: {err}") from None


def _load_fitting(model, weights: Mapping[str, torch.Tensor], path: str, image_size: List[int],
                  model_name: str) -> None:
    """load_state_dict(strict=True) after checking that every tensor has the model's shape;
    a state dict of another image size says which size it fits (a raw `size mismatch`
    traceback would not)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise SnapshotError(f"checkpoint {path}: neither this project's snapshot nor a loadable release "
                            f"checkpoint for image_size={image_size}: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    wrong = [name for name, tensor in own.items() if tuple(weights[name].shape) != tuple(tensor.shape)]
    if wrong:
        raise SnapshotError(f"checkpoint {path} does not fit image_size={image_size}: "
                            f"{_size_hint(weights, wrong, model_name)}")
    model.load_state_dict(weights, strict=True)


def _size_hint(weights: Mapping[str, torch.Tensor], wrong: List[str], model_name: str) -> str:
    """Which image size a state dict fits, when its model can tell (`image_size_hint` of its
    registry entry); else the mismatching tensors."""
    hint = get_model(model_name).image_size_hint
    fitted = hint(weights) if hint is not None else None
    if fitted is not None:
        return fitted
    shown = ", ".join(f"{name} {list(weights[name].shape)}" for name in wrong[:3])
    return f"{len(wrong)} tensor(s) have other shapes: {shown}" + (" ..." if len(wrong) > 3 else "")


def saved_training_config(path: str, state, option: str = "checkpoint") -> Dict:
    """The config a project snapshot's run trained with, the options that older snapshots lack
    filled in with the values those runs used. Other files (the authors' release checkpoints)
    carry no config: SnapshotError naming `option` and the file."""
    if not is_project_snapshot(state) or not isinstance(state.get("config"), dict):
        raise SnapshotError(f"{option} {path} is not a training snapshot of this project: it holds no "
                            "saved config saying which dataset and pre-processing it was trained with")
    return {**OPTIONS_ADDED_LATER, **_translate_legacy(flat_record(state["config"]))}
