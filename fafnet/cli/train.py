"""Episodic training of FAF-Net (docs/protocol.md, training) as a Sacred experiment.

    python train.py with SYNTHETIC dataset.eval_fold=0 optimisation.n_steps=600 snapshot_interval=200 runtime.device=cpu
    python train.py with SYNTHETIC eval_fold=0 n_steps=900 resume=runs/train/3   # continue (flat names work too)
    python train.py print_config with SABS                                       # options, by ingredient

Ingredients: dataset, episodes, model, optimisation, runtime (fafnet/cli/ingredients/); the
loop's own options are `fafnet.cli.config.training_options`.

Every run is recorded in <runs_dir>/train/<id>/: Sacred's config.json (every option as used),
run.json (git commit, source files, package versions, status), metrics.json and cout.txt;
train.log; tensorboard/ (event files) and progress.png (loss, learning rate and gradient norm
curves, redrawn at every snapshot); snapshots/ (fafnet/runtime/snapshots.py: latest.pth with
everything resume needs while the run trains, final.pth at the end, the weights of older
snapshot steps in step_XXXXXXX.pth); data_manifest.json (the fold, the training volumes and
every training file with its sha256, also kept in each snapshot: fafnet/runtime/training_data.py).
Since an episode depends only on (seed, global step), a resumed run continues with exactly the
episodes the interrupted run would have seen and reaches the same weights; resuming on other
files is refused unless resume_other_data=True. Weights that became NaN or infinite are never
saved (the run fails), and SIGTERM ends the run as INTERRUPTED, resumable at once.
"""
import os
from typing import Dict

from fafnet.cli.config import (TRAINING_CHECKS, Experiment, configure_experiment, observer_run_dir, run_commandline,
                               training_options)
from fafnet.cli.ingredients.dataset import dataset
from fafnet.cli.ingredients.episodes import episodes
from fafnet.cli.ingredients.model import model
from fafnet.cli.ingredients.optimisation import optimisation
from fafnet.cli.ingredients.runtime import runtime
from fafnet.datasets.specs import SYNTHETIC_DATASETS
from fafnet.io.provenance import PROJECT_ROOT
from fafnet.models.registry import NO_PRETRAINED
from fafnet.models.pretrained import ACCEPTED_FORMATS
from fafnet.runtime.options import flat_options
from fafnet.runtime.runs import record_process, sigterm_interrupts
from fafnet.training.loop import train


def check_pretrained_choice(config: Dict) -> None:
    """Real datasets train from pretrained weights, as the paper does; a random start must be
    asked for explicitly (pretrained_weights=none)."""
    if config["pretrained_weights"] is None and config["dataset"] not in SYNTHETIC_DATASETS:
        raise ValueError(
            f"config option model.pretrained_weights is not set: training on {config['dataset']} starts from "
            f"a pretrained backbone, as the paper does. Download one of the two files and pass "
            f"pretrained_weights=PATH ({ACCEPTED_FORMATS}); torchvision's cache "
            f"(~/.cache/torch/hub/checkpoints/) is searched by default. To train from the random "
            f"initialisation on purpose, pass pretrained_weights=none.")


def check_random_start_options(config: Dict) -> None:
    """zero_init_residual changes the backbone's initialisation, which pretrained weights replace."""
    if config["zero_init_residual"] and config["pretrained_weights"] not in (None, NO_PRETRAINED):
        raise ValueError(f"config option model.zero_init_residual=True is for a random start; with "
                         f"model.pretrained_weights={config['pretrained_weights']!r} the backbone's BatchNorm "
                         f"weights come from the file")


ex = configure_experiment(
    Experiment("FAFNet-train", ingredients=[runtime, dataset, episodes, model, optimisation], base_dir=PROJECT_ROOT),
    "train", training_options, TRAINING_CHECKS, run_checks=[check_pretrained_choice, check_random_start_options])


@ex.main
def main(_config, _run, _log):
    run_dir = observer_run_dir(_run)
    if run_dir is None:
        raise RuntimeError("train.py needs a run folder for its snapshots; do not run it unobserved")
    _run.info["pid"] = os.getpid()   # lets fafnet.runtime.runs tell a killed run from a live one
    record_process(run_dir, dict(_run.info))
    with sigterm_interrupts():
        summary = train(flat_options(_config), run_dir, _log, log_scalar=_run.log_scalar)
    _run.info.update(summary)
    return summary["final_snapshot"]


def cli(argv=None) -> None:
    """The command line (`fafnet-train`, and train.py at the repository root)."""
    run_commandline(ex, argv)


if __name__ == "__main__":
    cli()
