"""Episodic training as a Sacred experiment (train.py at the repository root; fafnet-train):

    python train.py with SYNTHETIC eval_fold=0 n_steps=600 snapshot_interval=200 device=cpu
    python train.py with SYNTHETIC eval_fold=0 n_steps=900 resume=runs/train/3   # continue
    python train.py print_config with CHAOST2                                    # the options

The options are the root config.py's (fafnet/cli/experiment.py makes the experiment). Every
run is recorded in <runs_dir>/train/<id>/: Sacred's config.json (every option as used, the
model's options with their defaults), run.json (git commit, source files, package versions,
status), metrics.json and cout.txt; train.log; tensorboard/ and progress.png; snapshots/
(fafnet/runtime/snapshots.py: latest.pth with everything resume needs, final.pth at the end,
the weights of older snapshot steps in step_XXXXXXX.pth); data_manifest.json (the fold, the
training volumes and every training file with its sha256). An episode depends only on (seed,
step), so a resumed run continues with exactly the episodes the interrupted run would have
seen. Ctrl-C or SIGTERM lets the step under way finish, saves it as latest.pth and ends the
run as INTERRUPTED: `resume=<its run folder>` continues it (a second signal stops at once,
without saving that step). A resumed run goes on in a new run folder; the two are linked
both ways (the old folder's continued.json, the new one's data_manifest.json), checkpoint=<old
folder> follows to the continuation, and the new run's curves carry the earlier steps
(docs/training.md).
"""
import os

from fafnet.cli.experiment import make_experiment, observer_run_dir, run_commandline

ENGINE = "fafnet.training.loop"


def train(_config, _run, _log, model_options):
    """Train one fold. (`model_options` is a parameter so that Sacred accepts
    `model_options.<name>=...` for any option of the model.)"""
    from fafnet.runtime.runs import record_process, sigterm_interrupts
    from fafnet.training.loop import train as run_training

    run_dir = observer_run_dir(_run)
    if run_dir is None:
        raise RuntimeError("train.py needs a run folder for its snapshots; do not run it unobserved")
    _run.info["pid"] = os.getpid()   # lets fafnet.runtime.runs tell a killed run from a live one
    record_process(run_dir, dict(_run.info))
    with sigterm_interrupts():
        summary = run_training(dict(_config), run_dir, _log, log_scalar=_run.log_scalar, info=_run.info)
    _run.info.update(summary)
    return summary["final_snapshot"]


def experiment(config_path=None):
    """A fresh training experiment (config.py's options, or those of the file `config_path`)."""
    return make_experiment("FAFNet-train", train, "train", "train", config_path)


def cli(argv=None) -> None:
    """The command line (`fafnet-train`, and train.py at the repository root)."""
    run_commandline(experiment(), argv, ENGINE)


if __name__ == "__main__":
    cli()
