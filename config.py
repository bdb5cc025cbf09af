"""The Sacred configuration shared by train.py and test.py (SPEC sections 8 to 10).

Defaults are the authors' release defaults for Abd-CT (SPEC section 8). One named config
per dataset (SABS, CHAOST2, CMR, Prostate_MRI, SYNTHETIC) carries the dataset's folder,
image size, class names, test classes and supervoxel size::

    python train.py with SYNTHETIC eval_fold=0 n_steps=600 device=cpu
    python test.py with SYNTHETIC eval_fold=0 checkpoint=runs/train/1
    python train.py print_config with CHAOST2        # show every option

Data: each dataset's pre-processed files are read from ``<data_root>/<dataset folder>``
(``data_root`` defaults to ``./data_processed``, relative to the working directory; folder
names are in dataloaders/dataset_specs.py), or from ``data_dir`` when given.

Runs: Sacred's FileStorageObserver records each run (config.json, run.json, metrics.json,
cout.txt) in ``<runs_dir>/train/<id>/`` or ``<runs_dir>/test/<id>/``; snapshots, logs,
predictions and results go into the same run folder.

Pretrained weights (SPEC section 2): ``pretrained_weights=None`` trains from the encoder's own
initialisation. Point it at ``deeplabv3_resnet101_coco-586e9e4e.pth`` or
``resnet101-63fe2227.pth``; torchvision keeps downloaded files in
``~/.cache/torch/hub/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``), the place to look first.
"""
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin setuptools<81 in
# requirements.txt keeps it working, so the warning says nothing actionable to users.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from sacred import SETTINGS, Experiment  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from sacred.utils import apply_backspaces_and_linefeeds  # noqa: E402

from dataloaders.dataset_specs import DATASETS, DatasetSpec, get_dataset_spec  # noqa: E402

# Sacred's default "fd" capture spawns `tee` processes and fights with pytest's capture;
# "sys" tees sys.stdout/stderr in-process, which keeps tqdm on the console and still fills
# the run's cout.txt (cleaned of progress-bar carriage returns by the output filter).
SETTINGS.CAPTURE_MODE = "sys"

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
EXCLUDE_RULES = ("any", "all")
OPTIMIZERS = ("sgd", "adam")


def release_defaults():
    """The options and their defaults (a Sacred config scope; comments are shown by
    `print_config`)."""
    dataset = "SABS"                # key of dataloaders.dataset_specs.DATASETS
    data_root = "./data_processed"  # pre-processed datasets live in <data_root>/<folder>
    data_dir = None                 # explicit dataset folder; overrides data_root
    image_size = None               # [H, W]; None: the dataset's size
    test_classes = None             # None: the dataset's test classes
    n_volumes = None                # None: count the image_*.nii.gz files present

    eval_fold = 0                   # 0..4: the fold held out for evaluation
    setting = 2                     # 1: test organs may appear in training; 2: removed
    exclude_rule = "any"            # setting 2: drop slices with ANY test class ("all": release)
    use_gt = False                  # False: supervoxel labels (self-supervised); True: GT
    supervoxel_min_size = None      # None: the dataset's supervoxel folder
    n_shot = 1
    min_size = 200                  # min foreground pixels of an episode's slices
    augment = True
    max_iters_per_load = 3000       # episodes per "epoch" of the training dataset

    n_steps = 42000
    snapshot_interval = 6000
    print_interval = 100            # console/log/metrics every this many steps
    lr = 1e-3
    momentum = 0.9
    weight_decay = 5e-4
    lr_step_size = 3000             # lr *= lr_gamma every this many steps ...
    lr_gamma = 0.98
    lr_milestones = None            # ... or these explicit steps (None: every lr_step_size)
    grad_clip_norm = None           # clip the total gradient norm to this (None: release, no clipping)
    optimizer = "sgd"               # "sgd" (release: lr, momentum, weight_decay) or "adam" (not in the
                                    # release; lr, weight_decay as L2, betas 0.9/0.999). From a random
                                    # start the stem's gradients are ~1e3x the heads', so one SGD lr
                                    # cannot train both; the synthetic demo uses adam.
    seed = 2025
    device = "auto"                 # auto, cpu, cuda, cuda:N, mps
    num_workers = 4                 # data-loading worker processes (0: in the main process)
    pretrained_weights = None       # path to a torchvision ResNet-101 / DeepLabV3 file
    resume = None                   # training snapshot or training run folder to continue

    checkpoint = None               # test.py: snapshot, training run folder, release file, or "untrained"
    supp_idx = 0                    # test.py: which fold volume is the support (release script: 2)
    n_part = 3                      # test.py: support slices / query chunks
    eval_batch_size = None          # test.py: query slices per forward pass (None: 1 on CPU, 8 else)
    save_predictions = True         # test.py: write prediction volumes (NIfTI)
    save_figures = True             # test.py: write one PNG per class

    amp_bf16 = False                # bf16 autocast (meant for CUDA; off until measured)
    channels_last = None            # channels-last weights and inputs (None: evaluation on CPU only)
    runs_dir = "runs"               # Sacred run folders go to <runs_dir>/<train|test>/<id>


def dataset_named_config(spec: DatasetSpec) -> Dict:
    """A named config that selects `spec`'s dataset with its size, classes and supervoxels."""
    return {
        "dataset": spec.name,
        "image_size": list(spec.image_size),
        "test_classes": list(spec.test_classes),
        "supervoxel_min_size": spec.supervoxel_min_size,
    }


@dataclass(frozen=True)
class Settings:
    """The configuration with every None resolved against the dataset's spec."""
    spec: DatasetSpec
    data_dir: str
    image_size: Tuple[int, int]
    test_classes: Tuple[int, ...]
    supervoxel_min_size: int
    lr_milestones: Tuple[int, ...]

    @property
    def class_names(self) -> Dict[int, str]:
        return {c: self.spec.classes.get(c, f"class {c}") for c in self.test_classes}


def resolve_settings(config: Dict) -> Settings:
    """Validate a run's config and fill in dataset-derived values (raises ValueError naming
    the option and what is wrong)."""
    validate_config(config)
    spec = get_dataset_spec(config["dataset"])
    data_dir = config["data_dir"] or os.path.join(config["data_root"], spec.folder)
    image_size = tuple(int(v) for v in (config["image_size"] or spec.image_size))
    test_classes = tuple(int(c) for c in (config["test_classes"] or spec.test_classes))
    milestones = config["lr_milestones"]
    if milestones is None:
        # The release's rule: a milestone every lr_step_size steps strictly before n_steps.
        step = config["lr_step_size"]
        milestones = list(range(step, config["n_steps"], step))
    return Settings(spec=spec, data_dir=data_dir, image_size=image_size,
                    test_classes=test_classes,
                    supervoxel_min_size=int(config["supervoxel_min_size"] or spec.supervoxel_min_size),
                    lr_milestones=tuple(int(m) for m in milestones))


def validate_config(config: Dict) -> None:
    """Clear errors for options that Sacred's type checks let through."""
    if config["dataset"] not in DATASETS:
        raise ValueError(f"dataset={config['dataset']!r} is unknown; known datasets: "
                         f"{', '.join(DATASETS)} (named configs of the same names set them up)")
    _check(config["eval_fold"] in range(5), "eval_fold", config, "must be 0, 1, 2, 3 or 4")
    _check(config["setting"] in (1, 2), "setting", config, "must be 1 or 2")
    _check(config["exclude_rule"] in EXCLUDE_RULES, "exclude_rule", config,
           "must be 'any' (literature) or 'all' (release)")
    for name in ("n_shot", "n_steps", "snapshot_interval", "print_interval", "lr_step_size",
                 "n_part", "max_iters_per_load"):
        _check(_is_int(config[name]) and config[name] >= 1, name, config, "must be an integer >= 1")
    if config["eval_batch_size"] is not None:
        _check(_is_int(config["eval_batch_size"]) and config["eval_batch_size"] >= 1, "eval_batch_size",
               config, "must be None (auto) or an integer >= 1")
    for name in ("num_workers", "min_size", "supp_idx"):
        _check(_is_int(config[name]) and config[name] >= 0, name, config, "must be an integer >= 0")
    for name in ("lr", "weight_decay", "momentum", "lr_gamma"):
        _check(isinstance(config[name], (int, float)) and config[name] >= 0, name, config,
               "must be a number >= 0")
    if config["image_size"] is not None:
        size = config["image_size"]
        _check(isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size),
               "image_size", config, "must be [H, W] with positive integers")
    if config["test_classes"] is not None:
        _check(isinstance(config["test_classes"], (list, tuple)) and len(config["test_classes"]) > 0
               and all(_is_int(c) and c > 0 for c in config["test_classes"]),
               "test_classes", config, "must be a non-empty list of positive class ids")
    if config["grad_clip_norm"] is not None:
        _check(isinstance(config["grad_clip_norm"], (int, float)) and not isinstance(config["grad_clip_norm"], bool)
               and config["grad_clip_norm"] > 0, "grad_clip_norm", config, "must be None or a number > 0")
    _check(config["optimizer"] in OPTIMIZERS, "optimizer", config,
           "must be 'sgd' (release) or 'adam'")
    if config["lr_milestones"] is not None:
        _check(isinstance(config["lr_milestones"], (list, tuple))
               and all(_is_int(m) and m > 0 for m in config["lr_milestones"]),
               "lr_milestones", config, "must be a list of positive step numbers")
    device = config["device"]
    _check(isinstance(device, str) and (device in ("auto", "cpu", "cuda", "mps") or
                                        (device.startswith("cuda:") and device[5:].isdigit())),
           "device", config, f"must be one of {DEVICES_HELP}")
    _check(config["channels_last"] in (None, True, False), "channels_last", config,
           "must be None (auto), True or False")
    for name in ("use_gt", "augment", "amp_bf16", "save_predictions", "save_figures"):
        _check(isinstance(config[name], bool), name, config, "must be True or False")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, name: str, config: Dict, what: str) -> None:
    if not ok:
        raise ValueError(f"config option {name}={config[name]!r} {what}")


def build_experiment(name: str, runs_subdir: str, doc: Optional[str] = None) -> Experiment:
    """A Sacred Experiment with the defaults, one named config per dataset, option
    validation before the run starts, and a FileStorageObserver under
    <runs_dir>/<runs_subdir> (runs_dir comes from the run's own config). `doc` is what
    `--help` shows (the calling script's docstring)."""
    ex = Experiment(name, save_git_info=False)
    ex.doc = doc if doc is not None else __doc__
    ex.config(release_defaults)
    for spec in DATASETS.values():
        ex.add_named_config(spec.name, dataset_named_config(spec))
    ex.captured_out_filter = apply_backspaces_and_linefeeds

    @ex.config_hook
    def validate_and_observe(config, command_name, logger):
        # Runs after the config is assembled and before the Run exists, so a bad option
        # fails before anything is written and the observer can follow `runs_dir`.
        validate_config(config)
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


def observer_run_dir(run) -> Optional[str]:
    """The folder a Sacred run is being recorded into (None when unobserved)."""
    for observer in run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return observer.dir
    return None


# The experiment as the interface contract names it; train.py and test.py build their own
# (each with its main function) through build_experiment.
ex = build_experiment("FAFNet", "config")


if __name__ == "__main__":
    ex.run_commandline()
