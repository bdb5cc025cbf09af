"""The root config.py and the command line around it (fafnet/cli/experiment.py): the defaults
come from the file a researcher edits, print_config imports no torch, and every bad option is
one line naming it, before anything is written."""
import json
import os
import subprocess
import sys

import pytest

from fafnet.cli import evaluate, train
from fafnet.cli.experiment import CONFIG_ENV, default_options, run_commandline
from tests.helpers import ROOT, base_config, options_of, run_test, run_train


def edited_config(tmp_path, **replacements) -> str:
    """A copy of config.py with the default lines of `replacements` (in `cfg`, the file's first
    assignment of each) rewritten."""
    text = open(os.path.join(ROOT, "config.py")).read()
    for name, value in replacements.items():
        line = next(line for line in text.splitlines() if line.startswith(f"    {name} = "))
        text = text.replace(line, f"    {name} = {value!r}  # edited", 1)
    path = tmp_path / "config.py"
    path.write_text(text)
    return str(path)


def test_print_config_imports_no_torch():
    code = ("import sys; from fafnet.cli.train import cli; cli(['train.py', 'print_config']); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('NO TORCH')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "NO TORCH" in result.stdout and "eval_fold = 0" in result.stdout


def test_the_defaults_are_the_release_scripts():
    options = default_options()
    assert (options["dataset"], options["eval_fold"], options["setting"], options["n_steps"]) == ("SABS", 0, 1, 42000)
    assert (options["optimizer"], options["lr"], options["lr_step_size"], options["lr_gamma"]) == ("sgd", 1e-3, 3000, 0.98)
    assert (options["supp_idx"], options["n_part"], options["seed"]) == (2, 3, 2025)
    assert options["image_size"] == [257, 257] and options["test_classes"] == [1, 2, 3, 6]
    assert options["data_dir"] == os.path.join("./data_processed", "sabs_CT_normalized")
    # A dataset's named config moves what follows from it.
    chaos = options_of("train", "CHAOST2")
    assert chaos["image_size"] == [256, 256] and chaos["data_dir"].endswith("chaos_MR_T2_normalized")
    assert options_of("train", "CMR")["supervoxel_min_size"] == 1000


def test_editing_config_py_changes_what_train_and_test_run(tmp_path, phantom):
    """A researcher's edit of dataset and eval_fold (in a copy, used through FAFNET_CONFIG as
    for a checkout's own file) reaches training and evaluation."""
    path = edited_config(tmp_path, dataset="SYNTHETIC", eval_fold=1, data_root=str(tmp_path / "unused"))
    assert options_of("train", config_path=path)["eval_fold"] == 1
    runs = str(tmp_path / "runs")
    run = run_train(base_config(phantom, runs, n_steps=2, snapshot_interval=2), named_configs=(), config_path=path)
    config = json.load(open(os.path.join(run.observers[0].dir, "config.json")))
    assert (config["dataset"], config["eval_fold"]) == ("SYNTHETIC", 1)
    manifest = json.load(open(os.path.join(run.observers[0].dir, "data_manifest.json")))
    assert manifest["eval_fold"] == 1 and manifest["volume_indices"] == [0, 1, 5, 6, 7, 8, 9]   # fold 1: 2, 3, 4
    evaluation = run_test(base_config(phantom, runs, checkpoint=run.observers[0].dir), named_configs=(),
                          config_path=path)
    results = json.load(open(os.path.join(evaluation.observers[0].dir, "results.json")))
    assert results["protocol"]["eval_fold"] == 1 and results["fold_volumes"] == [2, 3, 4]


def test_the_environment_names_another_config_file(tmp_path, monkeypatch):
    path = edited_config(tmp_path, eval_fold=3, folds=[3, 4])
    monkeypatch.setenv(CONFIG_ENV, path)
    assert default_options()["eval_fold"] == 3
    assert options_of("evaluate")["folds"] == [3, 4]
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(FileNotFoundError, match="FAFNET_CONFIG=.*missing.py: no such file"):
        default_options()


def command_line(capsys, *words, command=train):
    """Run the command line; (exit status, stdout, stderr)."""
    try:
        run_commandline(command.experiment(), [f"{command.__name__.split('.')[-1]}.py", *words])
        status = 0
    except SystemExit as exit:
        status = exit.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("words, message", [
    # a flat name and a 0.5 path, alone or together
    (["eval_fold=1", "dataset.eval_fold=2"], "config option dataset.eval_fold: options have flat names since 0.6 "
                                             r"\(eval_fold=...\)"),
    (["lr=0.5", "optimisation.lr=0.1"], r"optimisation.lr: options have flat names since 0.6 \(lr=...\)"),
    (["dataset=SABS", "dataset.name=CHAOST2"], r"dataset.name: options have flat names since 0.6 \(dataset=...\)"),
    (["episodes.lr=0.1"], r"options have flat names since 0.6 \(lr=...\)"),
    (["dataset.foo=1"], r"options have flat names since 0.6 \(foo=...\)"),
    # an option given twice, two named configs that set one option
    (["eval_fold=1", "eval_fold=2"], "config option eval_fold is given twice"),
    (["CHAOST2", "SABS"], "named configs CHAOST2 and SABS both set dataset"),
    (["adnet", "cpu_recipe"], "named configs adnet and cpu_recipe both set n_steps"),
    # booleans and floats where integers belong
    (["eval_fold=True"], "config option eval_fold=True must be 0, 1, 2, 3 or 4"),
    (["setting=True"], "config option setting=True must be 1 or 2"),
    (["group=False"], "config option group=False must be None, 0 or 1"),
    (["eval_fold=1.0"], "config option eval_fold=1.0 must be 0, 1, 2, 3 or 4"),
    # lists and dicts where scalars belong
    (["model=[1]"], r"config option model=\[1\] must be a model name"),
    (["optimizer=[1]"], r"config option optimizer=\[1\] must be 'sgd'"),
    (['dataset=["SABS"]'], r"config option dataset=\['SABS'\] is not a known dataset"),
    (["resume=[1]"], r"config option resume=\[1\] must be None or a path"),
    (["checkpoint=[1,2]"], r"config option checkpoint=\[1, 2\] must be None, a path or 'untrained'"),
    (["model_options=3"], "config option model_options=3 must be a dict"),
    # sizes that would allocate the machine away
    (["n_steps=1000000000000"], "config option n_steps=1000000000000 must be an integer from 1 to 1000000000"),
    (["n_steps=1000000000000000000000000"], "config option n_steps=1000000000000000000000000 must be an integer"),
    (["image_size=[100000,100000]"], r"config option image_size=\[100000, 100000\] must be \[H, W\] with integers "
                                     "from 1 to 4096"),
    # names that are not options
    (["n_step=5"], r"config option n_step: no such option \(did you mean n_steps"),
    (["zero_init_residual=True"], r"zero_init_residual: one of FAF-Net's model options since 0.6 "
                                  r"\(model_options.zero_init_residual=...\)"),
    (["eval_fold.x=1"], "eval_fold is not a dict option"),
])
def test_bad_options_are_one_line_before_anything_is_written(words, message, capsys, tmp_path):
    dataset = [] if words[0] in ("CHAOST2", "adnet") else ["SYNTHETIC"]
    status, _, err = command_line(capsys, "with", *dataset, f"runs_dir={tmp_path}", "pretrained_weights=none", *words)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    import re
    assert re.search(message, lines[0]), lines[0]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("updates, message", [
    ({"model_options": {"foo": 1}}, "config option model_options.foo: model 'fafnet' has no option 'foo' "
                                    r"\(its options: icm, aff, threshold"),
    ({"model_options": {"icm": False}}, "config option model_options.aff=True needs icm=True"),
    ({"model_options": {"icm": 0}}, "config option model_options.icm=0 must be True or False"),
    ({"model_options": {"threshold": "fixed"}}, "model_options.threshold='fixed' must be one of 'adaptive', 'scalar'"),
    ({"model": "unet"}, "config option model='unet' is not a registered model; registered: fafnet"),
    ({"setting": 2, "setting2_protocol": "groups"}, r"group=None: group must be one of \[0, 1\] for SYNTHETIC"),
    ({"group": 1}, "group=1 applies to setting=2 with setting2_protocol='groups' only"),
    ({"test_classes": [1, 99]}, r"\[99\] are not classes of SYNTHETIC"),
    ({"resample_in_plane": [40, 40], "image_size": [33, 33]}, "differs from resample_in_plane"),
    ({"lr_milestones": [20, 10]}, "lr_milestones=\\[20, 10\\] must be increasing"),
])
def test_rules_across_options_and_the_models_own_are_checked_before_the_run(updates, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.experiment().run(named_configs=["SYNTHETIC"], config_updates={"runs_dir": str(tmp_path), **updates})
    assert not os.listdir(tmp_path)


def test_a_file_as_runs_dir_is_named(capsys, tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    status, _, err = command_line(capsys, "with", "SYNTHETIC", f"runs_dir={afile}", "pretrained_weights=none")
    assert status == 2 and f"config option runs_dir='{afile}' is a file, not a folder" in err


def test_help_describes_the_program(capsys):
    for command in (train, evaluate):
        status, out, err = command_line(capsys, "--help", command=command)
        name = command.__name__.split(".")[-1]
        assert status == 0 and err == ""
        assert f"{name}.py" in out and "print_config" in out and "dummy" not in out


def test_model_options_merge_over_a_named_configs_and_are_recorded_in_full(tmp_path, phantom):
    options = options_of("train", "SYNTHETIC", **{"model_options": {"icm": False, "aff": False}})
    assert options["model_options"] == {"icm": False, "aff": False}
    run = run_train(base_config(phantom, str(tmp_path), n_steps=1, snapshot_interval=1,
                                model_options={"icm": False, "aff": False, "threshold": "scalar"}))
    config = json.load(open(os.path.join(run.observers[0].dir, "config.json")))
    assert config["model_options"] == {"icm": False, "aff": False, "threshold": "scalar",
                                       "zero_init_residual": False, "threshold_head_init_scale": 1.0}
