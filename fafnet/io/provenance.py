"""What a result records about how it was made: the code version and the protocol.

Sacred's run.json already holds the git commit, the source files and the package versions
of a run; `protocol_record` adds to each results.json the fields that decide whether two
numbers may be compared (dataset, setting and its protocol, classes, fold, support indices,
n_part, the checkpoint with its step and its training run's key options, the pretrained
weights, the pre-processing route, the code commit).
"""
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import PurePath
from typing import Dict, Iterable, Mapping, Optional, Set, Tuple

from fafnet.io.layout import PREPROCESSING_MANIFEST_NAME, SYNTHETIC_MANIFEST_NAME

# The repository (or installation) root: fafnet/io/provenance.py is three levels below it.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Training options that make two checkpoints comparable (the fold is recorded apart).
TRAINING_KEY_OPTIONS = (
    "model", "model_options", "dataset", "setting", "setting2_protocol", "group", "test_classes", "use_gt",
    "pseudo_labels", "n_shot", "n_steps", "optimizer", "lr", "momentum", "weight_decay", "lr_step_size",
    "lr_gamma", "lr_milestones", "grad_clip_norm", "min_size", "augment", "max_iters_per_load", "seed",
    "supervoxel_min_size", "superpixel_min_size", "image_size", "resample_in_plane", "pretrained_weights",
    "amp_bf16")
PREPROCESSING_MANIFESTS = (PREPROCESSING_MANIFEST_NAME, SYNTHETIC_MANIFEST_NAME)
# The distributions a run computes with (requirements.txt). Sacred finds imported packages by
# their top_level.txt, which some wheels (torch, scipy) no longer ship, so they are named here.
RUNTIME_DISTRIBUTIONS = ("torch", "torchvision", "numpy", "scipy", "sacred", "SimpleITK", "nibabel",
                         "opencv-python-headless", "tqdm", "tensorboard", "matplotlib")


def record_dependencies(experiment) -> None:
    """Add the installed version of every runtime distribution to a Sacred experiment's
    dependencies (run.json lists them)."""
    from sacred.dependencies import PackageDependency

    present = {dependency.name.lower() for dependency in experiment.dependencies}
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name.lower() not in present:
            experiment.dependencies.add(PackageDependency(name, version))


@functools.lru_cache(maxsize=None)
def _real_directory(directory: str) -> str:
    return os.path.realpath(directory)


def _real_file(filename: str) -> str:
    """os.path.realpath(filename), with the real path of its directory looked up once per process."""
    if os.path.islink(filename):
        return os.path.realpath(filename)
    return os.path.join(_real_directory(os.path.dirname(filename)), os.path.basename(filename))


def is_project_module(filename: str, modname: str, real_root: str) -> bool:
    """Sacred's rule for a local source (sacred.dependencies.is_local_source): the module's real
    file lies under `real_root` and its path there ends with its dotted name."""
    from sacred.dependencies import convert_path_to_module_parts

    real = _real_file(os.path.abspath(filename))
    if not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return False
    path_parts = convert_path_to_module_parts(PurePath(os.path.relpath(real, real_root)))
    mod_parts = modname.split(".")
    if path_parts == mod_parts:
        return True
    if len(path_parts) > len(mod_parts):
        return False
    return all(p == m for p, m in zip(reversed(convert_path_to_module_parts(PurePath(real))), reversed(mod_parts)))


def imported_sources_and_packages(root: str = PROJECT_ROOT) -> Tuple[Set, Set]:
    """(Sacred Source of every imported module that is a file of `root`, Sacred PackageDependency
    of every other imported top-level package with a version): what Sacred's "sys" discovery
    finds, at a fraction of its cost: Sacred resolves every module's path again for each
    experiment (about 0.5 s with the engines imported, bench/bench_startup.py); here each
    directory is resolved once per process."""
    from sacred.dependencies import MODULE_BLACKLIST, PackageDependency, Source

    real_root = os.path.realpath(root)
    sources, packages = set(), set()
    for modname, module in list(sys.modules.items()):
        if modname in MODULE_BLACKLIST or module is None:
            continue
        filename = getattr(module, "__file__", None)
        local = bool(filename) and is_project_module(filename, modname, real_root)
        if local:
            sources.add(Source.create(os.path.abspath(filename), save_git_info=False))
        elif not modname.startswith("_") and "." not in modname:
            try:
                package = PackageDependency.create(module)
            except AttributeError:
                continue
            if package.version is not None:
                packages.add(package)
    return sources, packages


def code_version(root: str = PROJECT_ROOT) -> Dict[str, Optional[object]]:
    """{"commit": the git commit of the project, "dirty": uncommitted changes?}; None values
    when the code is not in a git checkout or git is missing."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def weights_name(path: Optional[str]) -> Optional[str]:
    """A pretrained weights file as recorded: its file name (torchvision's names carry a
    hash prefix, so the name identifies the weights on any machine); None for none."""
    if path is None or path == "none":
        return None
    return os.path.basename(path)


# What the training record adds about the fold a checkpoint was trained for: it differs
# between the folds of one table by design (fafnet/evaluation/results.py does not compare it).
TRAINING_FOLD_FIELDS = ("eval_fold", "volume_indices", "image_files")


def training_record(training_config: Optional[Mapping],
                    training_data: Optional[Mapping] = None) -> Optional[Dict]:
    """The key options of the training run a checkpoint came from, with its held-out fold
    and training volumes (their indices and image file names; None for snapshots written
    before they were recorded). None for release checkpoints and the untrained baseline."""
    if training_config is None:
        return None
    record = {name: training_config.get(name) for name in TRAINING_KEY_OPTIONS}
    record["eval_fold"] = training_config.get("eval_fold")
    record["volume_indices"] = list(training_data["volume_indices"]) if training_data else None
    record["image_files"] = list(training_data["image_files"]) if training_data else None
    if "setting2_protocol" not in training_config and "exclude_rule" in training_config:
        # Snapshots of format v1 named the release's AND rule exclude_rule="all".
        record["setting2_protocol"] = {"all": "release"}.get(training_config["exclude_rule"],
                                                            training_config["exclude_rule"])
    record["pretrained_weights"] = weights_name(record["pretrained_weights"])
    return record


def preprocessing_record(data_dir: str) -> Optional[Dict]:
    """The pre-processing route and its parameters from the manifest beside the data, when
    one exists: the pre-processing CLIs' preprocessing_manifest.json, or the synthetic
    generator's settings."""
    for name in PREPROCESSING_MANIFESTS:
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable pre-processing manifest ({err})") from None
        if name == SYNTHETIC_MANIFEST_NAME:
            return {"manifest": name, "route": "synthetic phantom", "parameters": manifest}
        route = manifest.get("route") or {}
        return {"manifest": name, "route": route.get("name"), "parameters": route.get("parameters")}
    return None


def protocol_record(config: Mapping, supp_indices: Iterable[int], checkpoint: str,
                    checkpoint_step: Optional[int], training_config: Optional[Mapping],
                    training_data: Optional[Mapping] = None, model: Optional[str] = None,
                    model_options: Optional[Mapping] = None) -> Dict:
    """The protocol fields of a results.json (see the module docstring); `model` and
    `model_options`: the model evaluated (default: the config's)."""
    training = training_record(training_config, training_data)
    pretrained = training["pretrained_weights"] if training else weights_name(config["pretrained_weights"])
    return {
        "model": model or config.get("model", "fafnet"),
        "model_options": dict(model_options if model_options is not None else config.get("model_options") or {}),
        "dataset": config["dataset"],
        "setting": config["setting"],
        "setting2_protocol": config["setting2_protocol"] if config["setting"] == 2 else None,
        "group": config["group"] if config["setting"] == 2 and config["setting2_protocol"] == "groups" else None,
        "test_classes": list(config["test_classes"]),
        "eval_fold": config["eval_fold"],
        "supp_idx": list(supp_indices),
        "n_part": config["n_part"],
        "image_size": list(config["image_size"]),
        "resample_in_plane": list(config["resample_in_plane"]) if config.get("resample_in_plane") else None,
        "n_volumes": config["n_volumes"],
        "checkpoint": checkpoint,
        "checkpoint_step": checkpoint_step,
        "training": training,
        "pretrained_weights": pretrained,
        "preprocessing": preprocessing_record(config["data_dir"]),
        "code": code_version(),
    }
