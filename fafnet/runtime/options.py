"""The options of train.py and test.py (the root config.py): what a good value of each is.

`check_options(config, command)` checks a run's config once, before the run writes anything
(fafnet/cli/experiment.py calls it from Sacred's config hook), with an error that names the
option: ``config option eval_fold=5 must be 0, 1, 2, 3 or 4``. The engines take their
choices (optimisers, snapshot policies, compile targets) from here, so each rule has one
owner. This module imports no torch: print_config stays quick. A model's own options
(`model_options`) are checked against its builder by the model registry.
"""
import math
from typing import Callable, Dict, Mapping, Optional, Tuple

from fafnet.datasets.specs import DATASETS, SETTING2_PROTOCOLS, SYNTHETIC_DATASETS
from fafnet.io.weights import DEEPLABV3_FILE, DOWNLOAD_URL, IMAGENET_FILE

OPTIMIZERS = {"sgd": "the release", "adam": "not in the release"}
KEEP_CHOICES = ("weights", "none")
COMPILE_TARGETS = (None, "encoder", "model")
PSEUDO_LABELS = ("supervoxels", "superpixels")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
NO_PRETRAINED = "none"   # pretrained_weights=none: the model's own (random) initialisation
N_FOLDS = 5
# Bounds that keep a typo from allocating the machine away: a schedule of a billion steps, an
# image side of 4096 pixels (the datasets are 256 or 257; FAF-Net's AFF Linear grows with the
# fourth power of the side).
MAX_STEPS = 10 ** 9
MAX_IMAGE_SIDE = 4096

Check = Tuple[Callable[[object], bool], str]


# ----------------------------------------------------------------------------- predicates

def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (True is not a number here; inf passes `v >= 0` and then poisons
    every weight)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value, at_most: int = MAX_STEPS) -> bool:
    return is_int(value) and 1 <= value <= at_most


def image_size_ok(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(positive_int(side, MAX_IMAGE_SIDE) for side in value))


def valid_device(device) -> bool:
    return isinstance(device, str) and (device in ("auto", "cpu", "cuda", "mps")
                                        or (device.startswith("cuda:") and device[5:].isdigit()))


def fold_list_ok(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0 and len(set(value)) == len(value)
            and all(is_int(f) and 0 <= f < N_FOLDS for f in value))


def supp_indices_ok(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values) > 0 and all(is_int(v) and v >= 0 for v in values)


def optimizer_choices() -> str:
    """The optimizer values for an error message: "'sgd' (the release) or 'adam' (...)"."""
    named = [f"{name!r} ({what})" for name, what in OPTIMIZERS.items()]
    return " or ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _text(value) -> bool:
    return isinstance(value, str) and value != ""


POSITIVE: Check = (positive_int, f"must be an integer from 1 to {MAX_STEPS}")
NON_NEGATIVE_INT: Check = (lambda v: is_int(v) and 0 <= v <= MAX_STEPS, f"must be an integer from 0 to {MAX_STEPS}")
NON_NEGATIVE_NUMBER: Check = (lambda v: is_number(v) and v >= 0, "must be a finite number >= 0")
BOOLEAN: Check = (lambda v: isinstance(v, bool), "must be True or False")
PATH: Check = (_text, "must be a path (a non-empty string)")
OPTIONAL_PATH: Check = (_optional(_text), "must be None or a path (a non-empty string)")
SIZE_TEXT = f"[H, W] with integers from 1 to {MAX_IMAGE_SIDE}"

RULES: Dict[str, Check] = {
    # data and protocol
    "dataset": (lambda v: isinstance(v, str) and v in DATASETS, f"is not a known dataset; known: {', '.join(DATASETS)} "
                                         "(named configs of the same names choose them)"),
    "data_root": PATH, "data_dir": PATH,
    "n_volumes": (_optional(lambda v: positive_int(v, 100_000)), "must be None or an integer >= 1"),
    "image_size": (image_size_ok, f"must be {SIZE_TEXT}"),
    "resample_in_plane": (_optional(image_size_ok), f"must be None or {SIZE_TEXT}"),
    "eval_fold": (lambda v: is_int(v) and 0 <= v < N_FOLDS, "must be 0, 1, 2, 3 or 4"),
    "folds": (fold_list_ok, "must be a non-empty list of distinct folds, each 0 to 4"),
    "setting": (lambda v: is_int(v) and v in (1, 2), "must be 1 or 2"),
    "setting2_protocol": (lambda v: v in SETTING2_PROTOCOLS, f"must be one of {', '.join(SETTING2_PROTOCOLS)}"),
    "group": (lambda v: v is None or (is_int(v) and v in (0, 1)), "must be None, 0 or 1"),
    "test_classes": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(positive_int(c) for c in v),
                     "must be a non-empty list of positive class ids"),
    # episodes
    "n_shot": POSITIVE, "use_gt": BOOLEAN, "augment": BOOLEAN,
    "pseudo_labels": (lambda v: v in PSEUDO_LABELS, f"must be one of {', '.join(PSEUDO_LABELS)}"),
    "supervoxel_min_size": POSITIVE, "superpixel_min_size": POSITIVE, "min_size": NON_NEGATIVE_INT,
    "max_iters_per_load": POSITIVE,
    # model
    "model": (_text, "must be a model name (a string)"),
    "model_options": (lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
                      "must be a dict of the model's options, e.g. {'icm': False}"),
    "pretrained_weights": (OPTIONAL_PATH[0], "must be a path, 'none' or None"),
    "pretrained_allow_partial": BOOLEAN,
    # optimisation
    "n_steps": POSITIVE, "lr_step_size": POSITIVE,
    "optimizer": (lambda v: isinstance(v, str) and v in OPTIMIZERS, f"must be {optimizer_choices()}"),
    "lr": NON_NEGATIVE_NUMBER, "momentum": NON_NEGATIVE_NUMBER, "weight_decay": NON_NEGATIVE_NUMBER,
    "lr_gamma": NON_NEGATIVE_NUMBER,
    "lr_milestones": (_optional(lambda v: isinstance(v, (list, tuple)) and all(positive_int(m) for m in v)),
                      "must be None or a list of positive step numbers"),
    "grad_clip_norm": (_optional(lambda v: is_number(v) and v > 0), "must be None or a finite number > 0"),
    # Sacred seeds numpy's legacy generator with it, which takes 0 .. 2**32 - 1.
    "seed": (lambda v: is_int(v) and 0 <= v < 2 ** 32, f"must be an integer from 0 to {2 ** 32 - 1}"),
    # the training run
    "snapshot_interval": POSITIVE, "print_interval": POSITIVE, "num_workers": (lambda v: is_int(v) and 0 <= v <= 64,
                                                                               "must be an integer from 0 to 64"),
    "keep_snapshots": (lambda v: v in KEEP_CHOICES, f"must be one of {', '.join(KEEP_CHOICES)}"),
    "save_initial_snapshot": BOOLEAN, "resume": OPTIONAL_PATH, "resume_other_data": BOOLEAN,
    # evaluation
    "checkpoint": (_optional(_text), "must be None, a path or 'untrained'"),
    "supp_idx": (supp_indices_ok, "must be a fold position (an integer >= 0) or a non-empty list of them"),
    "n_part": (lambda v: positive_int(v, 1000), "must be an integer from 1 to 1000"),
    "save_predictions": BOOLEAN, "save_figures": BOOLEAN, "allow_leakage": BOOLEAN,
    # where and how it computes
    "device": (valid_device, f"must be one of {DEVICE_CHOICES}"),
    "num_threads": (_optional(lambda v: positive_int(v, 1024)), "must be None or an integer from 1 to 1024"),
    "amp_bf16": BOOLEAN, "cudnn_benchmark": BOOLEAN,
    "channels_last": (lambda v: v is None or isinstance(v, bool), "must be None, True or False"),
    "eval_batch_size": (_optional(lambda v: positive_int(v, 100_000)), "must be None or an integer >= 1"),
    "eval_graphs": BOOLEAN, "cuda_graph": BOOLEAN,
    "compile": (lambda v: v in COMPILE_TARGETS, "must be None, 'encoder' or 'model'"),
    "runs_dir": PATH,
}


def check_options(config: Mapping, command: Optional[str] = None) -> None:
    """Raise a ValueError naming the first option of `config` whose value breaks its rule,
    then the rules that relate options (`check_relations`), then those of `command`
    ("train" or "evaluate")."""
    for name, (ok, what) in RULES.items():
        if name in config and not ok(config[name]):
            raise ValueError(f"config option {name}={config[name]!r} {what}")
    check_relations(config)
    if command == "train":
        check_training_relations(config)


def check_relations(config: Mapping) -> None:
    """The rules across options (each option's own value: RULES)."""
    spec = DATASETS[config["dataset"]]
    if config["resample_in_plane"] and list(config["resample_in_plane"]) != list(config["image_size"]):
        raise ValueError(f"config option image_size={list(config['image_size'])} differs from "
                         f"resample_in_plane={list(config['resample_in_plane'])}: the network sees the "
                         "resampled grid (leave image_size unset)")
    protocol = config["setting2_protocol"] if config["setting"] == 2 else None
    if protocol == "groups":
        try:   # the rule's one owner: DatasetSpec.group_classes
            classes = spec.group_classes(config["group"])
        except ValueError as err:
            raise ValueError(f"config option group={config['group']!r}: {err}") from None
        if sorted(config["test_classes"]) != sorted(classes):
            raise ValueError(f"config option test_classes={list(config['test_classes'])}: the groups protocol's "
                             f"group {config['group']} of {spec.name} tests classes {list(classes)}")
    elif config["group"] is not None:
        raise ValueError(f"config option group={config['group']!r} applies to setting=2 with "
                         f"setting2_protocol='groups' only")
    unknown = [c for c in config["test_classes"] if c not in spec.classes]
    if unknown:
        raise ValueError(f"config option test_classes={list(config['test_classes'])}: {unknown} are not classes "
                         f"of {spec.name} (its classes: {sorted(spec.classes)})")
    milestones = config["lr_milestones"]
    if milestones is not None and list(milestones) != sorted(set(milestones)):
        raise ValueError(f"config option lr_milestones={list(milestones)} must be increasing")


def check_training_relations(config: Mapping) -> None:
    """train.py's rules: real datasets start from pretrained weights unless told otherwise; a
    random-start option (`zero_init_residual`, of every ResNet model) needs a random start."""
    if config["pretrained_weights"] is None and config["dataset"] not in SYNTHETIC_DATASETS:
        raise ValueError(
            f"config option pretrained_weights is not set: training on {config['dataset']} starts from a "
            f"pretrained backbone, as the paper does. Download one of the two files ({DOWNLOAD_URL}"
            f"{IMAGENET_FILE} or {DOWNLOAD_URL}{DEEPLABV3_FILE}) and pass pretrained_weights=PATH; "
            "torchvision's cache (~/.cache/torch/hub/checkpoints/) is searched by default. To train "
            "from the random initialisation on purpose, pass pretrained_weights=none.")
    if config["model_options"].get("zero_init_residual") and config["pretrained_weights"] not in (None, NO_PRETRAINED):
        raise ValueError(f"config option model_options.zero_init_residual=True is for a random start; with "
                         f"pretrained_weights={config['pretrained_weights']!r} the backbone's BatchNorm weights "
                         "come from the file")


def milestones(config: Mapping) -> list:
    """The steps where the learning rate is multiplied by lr_gamma: `lr_milestones`, or the
    release's rule (every lr_step_size steps before n_steps)."""
    if config["lr_milestones"] is not None:
        return [int(m) for m in config["lr_milestones"]]
    return list(range(config["lr_step_size"], config["n_steps"], config["lr_step_size"]))


# ----------------------------------------------------------------------------- older records

# The option groups of 0.5's config.json (options were grouped by concern then); an option
# named `name` in a group was the option named after the group.
LEGACY_GROUPS = ("dataset", "episodes", "model", "optimisation", "runtime", "evaluation")
# Options of 0.5 and earlier that became FAF-Net's model options in 0.6.
LEGACY_MODEL_OPTIONS = ("zero_init_residual", "threshold_head_init_scale")


def flat_record(config: Mapping) -> Dict:
    """A run's config as one flat dict of options, whichever version recorded it: 0.6's flat
    config as it is; 0.5's grouped config (config.json, snapshots) flattened; FAF-Net's
    initialisation options of 0.5 and earlier moved into `model_options`."""
    flat: Dict = {}
    for key, value in config.items():
        if key.startswith("__"):   # Sacred's `__doc__` entries
            continue
        if key in LEGACY_GROUPS and isinstance(value, Mapping):
            for name, item in value.items():
                if not name.startswith("__"):
                    flat[key if name == "name" else name] = item
        else:
            flat[key] = value
    moved = {name: flat.pop(name) for name in LEGACY_MODEL_OPTIONS if name in flat}
    if "model_options" not in flat:
        flat["model_options"] = moved if flat.get("model", "fafnet") == "fafnet" else {}
    return flat
