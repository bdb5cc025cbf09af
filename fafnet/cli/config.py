"""The Sacred configuration of train.py and test.py.

Three config scopes: `shared_options` (the dataset, fold, protocol, device, seed: both
experiments), `training_options` (train.py only) and `evaluation_options` (test.py only),
plus one named config per dataset (SABS, CHAOST2, CMR, Prostate_MRI, SYNTHETIC), which
selects the dataset; everything that follows from it (folder, image size, test classes,
supervoxel size) is computed in the scopes, so `config.json` records the values a run used::

    python train.py print_config with CHAOST2                 # every option and its value
    python train.py with SYNTHETIC eval_fold=0 n_steps=600 device=cpu
    python test.py with SYNTHETIC eval_fold=0 checkpoint=runs/train/1

The defaults reproduce the authors' scripts (their train.sh and evaluate.sh for SABS):
setting 1, 42000 steps of SGD (lr 1e-3, momentum 0.9, weight decay 5e-4, x0.98 every 3000
steps), a snapshot every 6000 steps, seed 2025, support volume 2 of the fold, 3 support
slices / query chunks. Every other choice is a named option recorded with the results.

Data: a dataset's pre-processed files are read from ``<data_root>/<dataset folder>``
(``data_root`` defaults to ``./data_processed``), or from ``data_dir`` when given.
Runs: Sacred's FileStorageObserver records each run (config.json, run.json with the git
commit, the source files and the package versions, metrics.json, cout.txt) in
``<runs_dir>/train/<id>/`` or ``<runs_dir>/test/<id>/``, next to the run's own outputs.
"""
import math
import os
import sys
import warnings
from typing import Callable, Dict, Optional, Sequence

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin setuptools<81 in
# requirements.txt keeps it working, so the warning says nothing actionable to users.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from sacred import SETTINGS, Experiment  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from sacred.utils import SacredError, apply_backspaces_and_linefeeds  # noqa: E402

from fafnet.datasets.specs import DATASETS, get_dataset_spec  # noqa: E402
from fafnet.episodes.datasets import SETTING2_PROTOCOLS  # noqa: E402
from fafnet.runtime.devices import (DEVICE_CHOICES, default_eval_batch_size, default_eval_channels_last,  # noqa: E402
                                default_num_workers)
from fafnet.io.provenance import record_dependencies  # noqa: E402
from fafnet.runtime.runs import Terminated  # noqa: E402
from fafnet.runtime.snapshots import KEEP_CHOICES  # noqa: E402
from fafnet.training.step import COMPILE_TARGETS  # noqa: E402
from fafnet.models.pretrained import default_pretrained_weights  # noqa: E402
from fafnet.models.registry import DEFAULT_MODEL, MODELS, model_options  # noqa: E402
from fafnet.training.loop import OPTIMIZERS  # noqa: E402

# Sacred's default "fd" capture spawns `tee` processes and fights with pytest's capture;
# "sys" tees sys.stdout/stderr in-process and still fills the run's cout.txt.
SETTINGS.CAPTURE_MODE = "sys"
# run.json lists every project module the run imported (not only those named in the main
# file) and every installed package it imported, with its version.
SETTINGS.DISCOVER_SOURCES = "sys"
SETTINGS.DISCOVER_DEPENDENCIES = "sys"

def spec(dataset: str):
    """The dataset's facts (`get_dataset_spec`), its unknown-key error as a ValueError (an
    option error of the command line) with the named configs' hint."""
    try:
        return get_dataset_spec(dataset)
    except KeyError as err:
        raise ValueError(f"{err.args[0]} (named configs of the same names set them up)") from None


def release_milestones(lr_step_size, n_steps) -> Optional[list]:
    """The release's milestones lr_step_size, 2 lr_step_size, ... before n_steps; None when
    either is not an integer >= 1 (validation then names that option: Sacred computes the
    config scopes before any check can run)."""
    if not (_positive_int(lr_step_size) and _positive_int(n_steps)):
        return None
    return list(range(lr_step_size, n_steps, lr_step_size))


def class_groups(dataset: str):
    """The two class groups of the `groups` protocol of setting 2 (empty when the dataset
    defines none)."""
    return tuple(tuple(g) for g in spec(dataset).class_groups or ())


def shared_options():
    """Options of training and evaluation (a Sacred config scope; comments show in print_config)."""
    dataset = "SABS"                # SABS, CHAOST2, CMR, Prostate_MRI or SYNTHETIC (named configs too)
    data_root = "./data_processed"  # pre-processed datasets live in <data_root>/<dataset folder>
    data_dir = os.path.join(data_root, spec(dataset).folder) if isinstance(data_root, str) else None  # this dataset's folder
    # [H, W]: resample every volume in-plane to this grid when it is loaded, for training and
    # evaluation alike (images linear, labels and supervoxels nearest; Dice is then computed
    # on this grid). None: volumes are used as stored (the release).
    resample_in_plane = None
    image_size = list(resample_in_plane or spec(dataset).image_size)  # [H, W] the network sees
    n_volumes = None                # None: the dataset's known count (30/20/35/40; SYNTHETIC: any), checked;
                                    # a number: the folds are made for that many volumes
    eval_fold = 0                   # 0..4: the fold held out for evaluation
    setting = 1                     # 1: test organs may appear in training; 2: their slices removed
    setting2_protocol = "release"   # setting 2: release (AND rule) | any | groups (Ouyang et al.)
    group = None                    # groups protocol: 0 or 1, the class group held out and tested
    test_classes = list(class_groups(dataset)[group]
                        if setting == 2 and setting2_protocol == "groups" and group in range(len(class_groups(dataset)))
                        else spec(dataset).test_classes)  # the dataset's, or the group's (groups protocol)
    seed = 2025
    model = DEFAULT_MODEL           # the network, by its registry name (fafnet.models.registry)
    device = "auto"                 # auto, cpu, cuda, cuda:N or mps
    # A torchvision ResNet-101 or DeepLabV3-ResNet-101 file; by default the one found in
    # torchvision's cache. "none": random initialisation (allowed on real datasets only so).
    pretrained_weights = default_pretrained_weights()
    # Accept a pretrained file that lacks some backbone tensors the encoder runs (conv1, bn1,
    # layer1-3; they keep their initialisation and a warning lists them). False: an error.
    pretrained_allow_partial = False
    amp_bf16 = False                # bf16 autocast (FFT, probabilities and losses stay float32)
    cudnn_benchmark = True          # CUDA: let cuDNN time its algorithms once per input shape
    runs_dir = "runs"               # Sacred run folders go to <runs_dir>/<train|test>/<id>


def training_options(dataset):
    """Options of train.py only."""
    n_shot = 1
    use_gt = False                  # False: supervoxel episodes (self-supervised); True: ground truth
    supervoxel_min_size = spec(dataset).supervoxel_min_size  # which supervoxels_<N> folder
    min_size = 200                  # min foreground pixels of an episode's first two slices
    augment = True
    max_iters_per_load = 3000       # episodes per "epoch" of the training dataset
    n_steps = 42000
    snapshot_interval = 6000
    keep_snapshots = "weights"      # older snapshots: "weights" (model only) or "none" (deleted)
    print_interval = 100            # console/log/metrics every this many steps
    optimizer = "sgd"               # "sgd" (release) or "adam" (not in the release; see README)
    lr = 1e-3
    momentum = 0.9                  # SGD only
    weight_decay = 5e-4
    lr_step_size = 3000             # lr *= lr_gamma every this many steps ...
    lr_gamma = 0.98
    lr_milestones = release_milestones(lr_step_size, n_steps)  # ... at these steps
    grad_clip_norm = None           # clip the total gradient norm to this (None: release, off)
    # A random start (no pretrained weights; the demo): every bottleneck's last BatchNorm weight
    # at 0 so each residual block starts as the identity (False: the release's initialisation).
    zero_init_residual = False
    # The threshold head's output conv starts at this times the release's initial weights
    # (1.0: the release; the demo's random start uses 0.05, see fafnet/models/factory.py).
    threshold_head_init_scale = 1.0
    save_initial_snapshot = False   # also keep snapshots/step_0000000.pth: the weights training starts from
    channels_last = False           # channels-last weights and inputs
    cuda_graph = False              # CUDA: replay forward + backward as one captured graph
    compile = None                  # torch.compile: None, "encoder" or "model" (forward + losses)
    num_workers = default_num_workers()  # data-loading processes (0: in the main process)
    resume = None                   # a training run folder or snapshot to continue
    # Resume although the training files differ from those the snapshot trained on (names or
    # sha256; recorded in the run's data_manifest.json). False: such a resume is an error.
    resume_other_data = False


def evaluation_options(device):
    """Options of test.py only."""
    checkpoint = None               # snapshot, training run folder, release checkpoint or "untrained"
    supp_idx = 2                    # support volume: its index in the fold (release script: 2), or a list
    n_part = 3                      # support slices per class and query chunks
    # Query slices per forward pass: 1 on a CPU (larger batches spill layer3's activations
    # out of cache there), 8 on a GPU.
    eval_batch_size = default_eval_batch_size(device)
    channels_last = default_eval_channels_last(device)  # on for a CPU, off for a GPU (README benchmarks)
    eval_graphs = False             # CUDA: replay each predict call from a captured graph
    save_predictions = True         # write prediction volumes (NIfTI)
    save_figures = True             # write one PNG per class
    # Evaluate a checkpoint whose training volumes include volumes of the evaluated fold
    # (recorded in results.json; the fold table refuses such a run). False: an error.
    allow_leakage = False


# ----------------------------------------------------------------------------- validation


def validate_config(config: Dict) -> None:
    """Clear errors for options that Sacred's type checks let through (options absent from
    an experiment's config are not checked)."""
    spec(config["dataset"])
    if config["model"] not in MODELS:
        raise ValueError(f"config option model={config['model']!r} is not a registered model; "
                         f"registered: {', '.join(MODELS)}")
    model_options(config["model"], config)   # another model's option set: an error naming it
    checks = _checks(config)
    for name, (ok, what) in checks.items():
        if name in config and not ok(config[name]):
            raise ValueError(f"config option {name}={config[name]!r} {what}")
    if config.get("resample_in_plane") and list(config["resample_in_plane"]) != list(config["image_size"]):
        raise ValueError(f"config option image_size={list(config['image_size'])} differs from "
                         f"resample_in_plane={list(config['resample_in_plane'])}: the network sees the "
                         "resampled grid (leave image_size unset)")
    if config["setting"] == 2 and config["setting2_protocol"] == "groups":
        try:   # the rule's one owner: DatasetSpec.group_classes
            spec(config["dataset"]).group_classes(config["group"])
        except ValueError as err:
            raise ValueError(f"config option group={config['group']!r}: {err}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float: inf passes `v >= 0` and then poisons every weight."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return _is_int(value) and value >= 1


def _checks(config: Dict) -> Dict[str, tuple]:
    """option -> (predicate, what a good value is)."""
    positive = (_positive_int, "must be an integer >= 1")
    path = (lambda v: isinstance(v, str) and v != "", "must be a folder path (a string)")
    checks = {
        "data_root": path, "data_dir": path, "runs_dir": path,
        # Sacred seeds numpy's legacy generator with it, which takes 0 .. 2**32 - 1.
        "seed": (lambda v: _is_int(v) and 0 <= v < 2 ** 32, f"must be an integer from 0 to {2 ** 32 - 1}"),
        "eval_fold": (lambda v: v in range(5), "must be 0, 1, 2, 3 or 4"),
        "setting": (lambda v: v in (1, 2), "must be 1 or 2"),
        "setting2_protocol": (lambda v: v in SETTING2_PROTOCOLS,
                              f"must be one of {', '.join(SETTING2_PROTOCOLS)}"),
        "group": (lambda v: v is None or v in (0, 1), "must be None, 0 or 1"),
        "n_volumes": (lambda v: v is None or _positive_int(v), "must be None or an integer >= 1"),
        "image_size": (_size_ok, "must be [H, W] with positive integers"),
        "resample_in_plane": (lambda v: v is None or _size_ok(v), "must be None or [H, W] with positive integers"),
        "test_classes": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_positive_int(c) for c in v),
                         "must be a non-empty list of positive class ids"),
        "device": (_valid_device, f"must be one of {DEVICE_CHOICES}"),
        "pretrained_weights": (lambda v: v is None or isinstance(v, str), "must be a path or 'none'"),
        "n_shot": positive, "n_steps": positive, "snapshot_interval": positive,
        "print_interval": positive, "lr_step_size": positive, "max_iters_per_load": positive,
        "n_part": positive,
        "eval_batch_size": positive,
        "num_workers": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
        "min_size": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
        "supervoxel_min_size": positive,
        "supp_idx": (_supp_indices_ok,
                     "must be a fold position (an integer >= 0) or a non-empty list of them"),
        "lr": (lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"),
        "weight_decay": (lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"),
        "momentum": (lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"),
        "lr_gamma": (lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"),
        "grad_clip_norm": (lambda v: v is None or (_is_number(v) and v > 0), "must be None or a number > 0, finite"),
        "optimizer": (lambda v: v in OPTIMIZERS, "must be 'sgd' (release) or 'adam'"),
        "keep_snapshots": (lambda v: v in KEEP_CHOICES, f"must be one of {', '.join(KEEP_CHOICES)}"),
        "lr_milestones": (lambda v: isinstance(v, (list, tuple)) and all(_positive_int(m) for m in v),
                          "must be a list of positive step numbers"),
        "threshold_head_init_scale": (lambda v: _is_number(v) and v > 0,
                                      "must be a number > 0, finite (1.0: the release's initialisation)"),
    }
    checks["compile"] = (lambda v: v in COMPILE_TARGETS, "must be None, 'encoder' or 'model'")
    for name in ("use_gt", "augment", "amp_bf16", "save_predictions", "save_figures", "channels_last",
                 "pretrained_allow_partial", "cudnn_benchmark", "cuda_graph", "eval_graphs",
                 "zero_init_residual", "save_initial_snapshot", "resume_other_data", "allow_leakage"):
        checks[name] = (lambda v: isinstance(v, bool), "must be True or False")
    return checks


def _size_ok(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(x) for x in value)


def _valid_device(device) -> bool:
    return isinstance(device, str) and (device in ("auto", "cpu", "cuda", "mps")
                                        or (device.startswith("cuda:") and device[5:].isdigit()))


def _supp_indices_ok(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values) > 0 and all(_is_int(v) and v >= 0 for v in values)


# ----------------------------------------------------------------------------- experiments


def configure_experiment(ex: Experiment, runs_subdir: str, own_options: Callable,
                         run_checks: Sequence[Callable[[Dict], None]] = ()) -> Experiment:
    """Give `ex` (created in train.py or test.py, so that Sacred records that script as the
    main file) the shared and its own config scopes, one named config per dataset, option
    validation before the run starts (`run_checks` too, except for print_config), and a
    FileStorageObserver under <runs_dir>/<runs_subdir>."""
    record_dependencies(ex)
    ex.config(shared_options)
    ex.config(own_options)
    for name in DATASETS:
        ex.add_named_config(name, {"dataset": name})
    ex.captured_out_filter = apply_backspaces_and_linefeeds

    @ex.config_hook
    def validate_and_observe(config, command_name, logger):
        # Runs after the config is assembled and before the Run exists, so a bad option
        # fails before anything is written and the observer can follow `runs_dir`.
        validate_config(config)
        if command_name != "print_config":
            for check in run_checks:
                check(config)
        _attach_file_observer(ex, os.path.join(config["runs_dir"], runs_subdir))
        return {}

    return ex


def _attach_file_observer(ex: Experiment, directory: str) -> None:
    """Make `ex` record into `directory`, replacing the observer of an earlier run made by
    this helper (in-process runs with different runs_dir must not share one)."""
    ex.observers[:] = [o for o in ex.observers if not getattr(o, "_fafnet_auto", False)]
    observer = FileStorageObserver(directory)
    observer._fafnet_auto = True
    ex.observers.append(observer)


# Errors that mean "bad option or bad input" (each names what is wrong): the command line
# prints them as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ArithmeticError, SacredError)


def run_commandline(ex: Experiment, argv: Optional[Sequence[str]] = None) -> None:
    """`ex.run_commandline`, but a user error ends the program with one line naming it and
    exit status 1 instead of a traceback. (Sacred re-raises in its debug mode, which changes
    nothing else about a run.)"""
    argv = list(sys.argv if argv is None else argv)
    if "--debug" not in argv and "-d" not in argv:
        argv.append("--debug")
    try:
        ex.run_commandline(argv)
    except USER_ERRORS as err:
        print(f"{os.path.basename(argv[0])}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as err:   # Ctrl-C or SIGTERM (fafnet.runtime.runs.sigterm_interrupts)
        print(f"{os.path.basename(argv[0])}: interrupted ({err or 'Ctrl-C'}); the run is recorded as "
              f"INTERRUPTED (a training run continues with resume=<its run folder>)", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)


def observer_run_dir(run) -> str:
    """The folder a Sacred run is being recorded into (None when unobserved)."""
    for observer in run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return observer.dir
    return None

