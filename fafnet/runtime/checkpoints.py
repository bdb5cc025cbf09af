"""Checkpoints for evaluation and segmentation: which snapshot a user's name means (a file, a
training run folder, its continuation, a folder of runs) and loading it into the model its
snapshot names, with the options it was trained with.
"""
import os
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch

from fafnet.models.registry import DEFAULT_MODEL, get_model
from fafnet.runtime.options import flat_record
from fafnet.runtime.runs import COMPLETED, RUNNING, continuations, list_runs, run_status
from fafnet.runtime.snapshots import (FINAL_NAME, LATEST_NAME, OPTIONS_ADDED_LATER, SnapshotError,
                                      NonFiniteWeightsError, describe_non_finite, is_project_snapshot, log,
                                      newest_snapshot, read_snapshot_file, run_folder_of, snapshot_model_name,
                                      snapshot_model_options)

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
