"""The Sacred configuration of train.py and test.py: ingredients, named configs, validation.

The options are grouped by concern into Sacred ingredients (fafnet/cli/ingredients/):
`dataset` (the data, grid, fold and setting), `episodes` (train.py: episode sampling),
`model` (the network and its initial weights), `optimisation` (train.py: optimiser and
schedule), `runtime` (device, bf16, run folders) and `evaluation` (test.py: checkpoint,
protocol, outputs); each computes what follows from its options in its config scope and checks
its own options once. train.py's loop options (`training_options`) and `seed` are the
experiments' own. One named config per dataset (SABS, CHAOST2, CMR, Prostate_MRI, SYNTHETIC)
selects it::

    python train.py print_config with CHAOST2                 # every option and its value
    python train.py with SYNTHETIC dataset.eval_fold=0 optimisation.n_steps=600 runtime.device=cpu
    python test.py with SYNTHETIC dataset.eval_fold=0 evaluation.checkpoint=runs/train/1

Every option name is unique, so the flat names of earlier commands still work
(``eval_fold=0 n_steps=600 device=cpu checkpoint=runs/train/1``; ``dataset=CHAOST2`` and
``model=tiny`` name `dataset.name` and `model.name`), and snapshots and results record the
options flat (fafnet.runtime.options.flat_options).

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
import os
import sys
import warnings
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin setuptools<81 in
# requirements.txt keeps it working, so the warning says nothing actionable to users.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import sacred  # noqa: E402
from sacred import SETTINGS  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from sacred.utils import SacredError, apply_backspaces_and_linefeeds  # noqa: E402

from fafnet.cli.ingredients.checks import NON_NEGATIVE_INT, POSITIVE, booleans, check_options, is_int  # noqa: E402
from fafnet.datasets.specs import DATASETS  # noqa: E402
from fafnet.io.provenance import record_dependencies  # noqa: E402
from fafnet.runtime.devices import default_num_workers  # noqa: E402
from fafnet.runtime.options import INGREDIENTS, NAME_OPTION, flat_options, option_path  # noqa: E402
from fafnet.runtime.runs import Terminated  # noqa: E402
from fafnet.runtime.snapshots import KEEP_CHOICES  # noqa: E402
from fafnet.training.step import COMPILE_TARGETS  # noqa: E402

# Sacred's default "fd" capture spawns `tee` processes and fights with pytest's capture;
# "sys" tees sys.stdout/stderr in-process and still fills the run's cout.txt.
SETTINGS.CAPTURE_MODE = "sys"
# run.json lists every project module the run imported (not only those named in the main
# file) and every installed package it imported, with its version.
SETTINGS.DISCOVER_SOURCES = "sys"
SETTINGS.DISCOVER_DEPENDENCIES = "sys"


def experiment_options():
    """The options of both experiments outside any ingredient (a Sacred config scope)."""
    seed = 2025


def training_options():
    """train.py's own options: the loop's snapshots and logs, resume, and training's speed
    options (a Sacred config scope)."""
    snapshot_interval = 6000
    keep_snapshots = "weights"      # older snapshots: "weights" (model only) or "none" (deleted)
    print_interval = 100            # console/log/metrics every this many steps
    save_initial_snapshot = False   # also keep snapshots/step_0000000.pth: the weights training starts from
    channels_last = False           # channels-last weights and inputs
    cuda_graph = False              # CUDA: replay forward + backward as one captured graph
    compile = None                  # torch.compile: None, "encoder" or "model" (forward + losses)
    num_workers = default_num_workers()  # data-loading processes (0: in the main process)
    resume = None                   # a training run folder or snapshot to continue
    # Resume although the training files differ from those the snapshot trained on (names or
    # sha256; recorded in the run's data_manifest.json). False: such a resume is an error.
    resume_other_data = False


EXPERIMENT_CHECKS = {
    # Sacred seeds numpy's legacy generator with it, which takes 0 .. 2**32 - 1.
    "seed": (lambda v: is_int(v) and 0 <= v < 2 ** 32, f"must be an integer from 0 to {2 ** 32 - 1}"),
}
TRAINING_CHECKS = {
    **EXPERIMENT_CHECKS,
    "snapshot_interval": POSITIVE, "print_interval": POSITIVE, "num_workers": NON_NEGATIVE_INT,
    "keep_snapshots": (lambda v: v in KEEP_CHOICES, f"must be one of {', '.join(KEEP_CHOICES)}"),
    "compile": (lambda v: v in COMPILE_TARGETS, "must be None, 'encoder' or 'model'"),
    **booleans("channels_last", "cuda_graph", "save_initial_snapshot", "resume_other_data"),
}


class Experiment(sacred.Experiment):
    """A Sacred experiment whose options are grouped into ingredients and also accepted by their
    flat names (the commands of the release and of 0.4: ``eval_fold=1`` is ``dataset.eval_fold=1``,
    ``dataset=CHAOST2`` is ``dataset.name=CHAOST2``), in `run` and so on the command line."""

    def option_paths(self) -> Dict[str, str]:
        """flat option name -> its dotted config path, for every option of this experiment."""
        paths = {}
        for ingredient, _ in self.traverse_ingredients():
            prefix = "" if ingredient is self else ingredient.path
            for scope in ingredient.configurations:
                for name in scope_option_names(scope):
                    paths[prefix if prefix and name == NAME_OPTION else name] = option_path(prefix, name)
        return paths

    def run(self, command_name=None, config_updates=None, named_configs=(), info=None, meta_info=None,
            options=None):
        return super().run(command_name, self.dotted_updates(config_updates), named_configs, info, meta_info,
                           options)

    def dotted_updates(self, updates: Optional[Mapping]) -> Dict:
        """`updates` with every flat option name replaced by its path (a nested ingredient dict,
        a dotted path or an unknown name passes unchanged: Sacred reports the last)."""
        paths, dotted = self.option_paths(), {}
        for key, value in (updates or {}).items():
            flat_alias = key in paths and not (key in INGREDIENTS and isinstance(value, Mapping))
            target = paths[key] if flat_alias else key
            if target in dotted:
                raise ValueError(f"config option {target} is given twice (as {key} and by its other name)")
            dotted[target] = value
        return dotted


def scope_option_names(scope) -> Tuple[str, ...]:
    """The options a config scope defines: its function's local names less its arguments (the
    configs of other ingredients it reads) and private names."""
    code = scope._func.__code__
    return tuple(name for name in code.co_varnames[code.co_argcount:] if not name.startswith("_"))


def check_experiment_options(config: Mapping, checks: Mapping) -> None:
    """The experiment's own options (outside the ingredients, which check theirs)."""
    own = {name: value for name, value in config.items() if name not in INGREDIENTS}
    check_options("", own, checks)


# ----------------------------------------------------------------------------- experiments


def configure_experiment(ex: Experiment, runs_subdir: str, own_options: Callable = None,
                         own_checks: Mapping = EXPERIMENT_CHECKS,
                         run_checks: Sequence[Callable[[Dict], None]] = ()) -> Experiment:
    """Give `ex` (created in train.py or test.py with its ingredients, so that Sacred records
    that script as the main file) the shared and its own config scopes, one named config per
    dataset, validation of its own options (the ingredients check theirs) and `run_checks` on
    the run's flat options (except for print_config) before the run starts, and a
    FileStorageObserver under <runs_dir>/<runs_subdir>."""
    record_dependencies(ex)
    ex.config(experiment_options)
    if own_options is not None:
        ex.config(own_options)
    for name in DATASETS:
        ex.add_named_config(name, {"dataset": {NAME_OPTION: name}})
    ex.captured_out_filter = apply_backspaces_and_linefeeds

    @ex.config_hook
    def validate_and_observe(config, command_name, logger):
        # Runs after the ingredients' hooks and before the Run exists, so a bad option fails
        # before anything is written and the observer can follow `runs_dir`.
        check_experiment_options(config, own_checks)
        options = flat_options(config)
        if command_name != "print_config":
            for check in run_checks:
                check(options)
        _attach_file_observer(ex, os.path.join(options["runs_dir"], runs_subdir))
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

