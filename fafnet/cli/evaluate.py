"""Evaluation of FAF-Net with the shared 1-way 1-shot protocol (docs/protocol.md, evaluation)
as a Sacred experiment.

    python test.py with SYNTHETIC eval_fold=0 checkpoint=runs/train/1
    python test.py with SABS eval_fold=0 supp_idx=2 checkpoint=release/fold0.pth
    python test.py with SABS eval_fold=0 "supp_idx=[0,1,2]" checkpoint=runs/train/1   # averaged
    python test.py with SYNTHETIC eval_fold=0 checkpoint=untrained     # baseline

The model is built with the checkpoint's own model and options (its snapshot records them);
`model` and `model_options` given on the command line must agree with them.
`checkpoint` is a snapshot of this project (train.py), a training run folder (its final or
latest snapshot), a folder of training runs (its newest completed run trained on this
dataset, fold and setting), a checkpoint of the authors' release (recognised by its key names
and converted), or "untrained" (the seeded initialisation, plus `pretrained_weights` if
given). A checkpoint trained on volumes of the evaluated fold is refused (test-set leakage)
unless `allow_leakage=True`; one that does not record its training volumes (older snapshots,
release checkpoints) is evaluated with a warning. results.json records which case applied.

For each support index and test class, the fold's volume `supp_idx` gives n_part support
slices; each other volume of the fold is a query whose slices containing the class are split
into n_part chunks, chunk i segmented with support slice i through the model's batched
`predict`. Dice and IoU are computed per query volume over its evaluated slices; a class's
score is the mean over query volumes, averaged over the support indices when several are
given. A query volume without the class, an empty chunk, or a support volume without the
class is recorded as skipped (results.json "skipped", a warning, an asterisk in the table);
means over classes cover the classes with a score and say so. A run where no class could be
evaluated fails, after writing results.json.

Outputs in <runs_dir>/test/<id>/: results.json (with the protocol record), results.csv,
predictions/ (NIfTI volumes with the query's geometry: one per query volume and class, and
one with all classes per query volume), figures/ (one PNG per class), test.log. With several
support indices, predictions and figures go to supp_idx_<k>/ sub-folders. An evaluation
stopped by Ctrl-C or SIGTERM is recorded as INTERRUPTED and cannot be resumed (run it again);
its folder gets partial.json (its predictions and figures are partial, no results.json). A
checkpoint that is the latest.pth of a run that never finished is evaluated with a warning
(the log, results.json's "warnings").
"""
import os

from fafnet.cli.experiment import make_experiment, observer_run_dir, run_commandline

ENGINE = "fafnet.evaluation.protocol"


def evaluate(_config, _run, _log, model_options):
    """Evaluate one fold. (`model_options` is a parameter so that Sacred accepts
    `model_options.<name>=...` for any option of the model.)"""
    from fafnet.evaluation.protocol import evaluate as run_evaluation
    from fafnet.io.logs import slug
    from fafnet.runtime.runs import record_process, sigterm_interrupts

    run_dir = observer_run_dir(_run)
    if run_dir is None:
        raise RuntimeError("test.py writes its results into its run folder; do not run it unobserved")
    _run.info["pid"] = os.getpid()
    record_process(run_dir, dict(_run.info))
    with sigterm_interrupts():
        results = run_evaluation(dict(_config), run_dir, _log)
    _run.info["mean_dice"] = results["mean_dice"]
    for entry in results["classes"].values():
        if entry["dice_mean"] is not None:   # a skipped class has no score to log
            _run.log_scalar(f"dice_{slug(entry['name'])}", entry["dice_mean"])
    _run.log_scalar("mean_dice", results["mean_dice"])
    return results["mean_dice"]


def experiment(config_path=None):
    """A fresh evaluation experiment (config.py's options, or those of the file `config_path`)."""
    return make_experiment("FAFNet-test", evaluate, "test", "evaluate", config_path)


def cli(argv=None) -> None:
    """The command line (`fafnet-evaluate`, and test.py at the repository root)."""
    run_commandline(experiment(), argv, ENGINE)


if __name__ == "__main__":
    cli()
