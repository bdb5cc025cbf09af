"""The options grouped into Sacred ingredients: the flat view, the flat names of earlier
commands, one owner per rule, and constructors filled by option name."""
import pytest

import fafnet.cli.evaluate as test_script
import fafnet.cli.train as train_script
from fafnet.cli.config import TRAINING_CHECKS, scope_option_names, training_options
from fafnet.cli.ingredients import dataset, episodes, evaluation, model, optimisation, runtime
from fafnet.runtime.options import INGREDIENTS, call_with_options, flat_options, option_path

INGREDIENT_MODULES = {"dataset": dataset, "episodes": episodes, "model": model,
                      "optimisation": optimisation, "runtime": runtime, "evaluation": evaluation}


def nested_config(script, *named, **updates):
    return script.ex.run("print_config", named_configs=list(named), config_updates=updates).config


# ----------------------------------------------------------------------------- the flat view


def test_flat_options_merge_the_groups_and_name_an_ingredients_name_option_after_it():
    nested = {"seed": 7, "__doc__": "scope text", "dataset": {"name": "CMR", "eval_fold": 2, "__doc__": "x"},
              "model": {"name": "tiny", "zero_init_residual": False}, "runtime": {"device": "cpu"}}
    assert flat_options(nested) == {"seed": 7, "dataset": "CMR", "eval_fold": 2, "model": "tiny",
                                    "zero_init_residual": False, "device": "cpu"}


def test_flat_options_read_a_flat_config_of_before_the_ingredients_unchanged():
    old = {"dataset": "SABS", "model": "fafnet", "eval_fold": 1, "n_steps": 42000}
    assert flat_options(old) == old


def test_an_option_name_in_two_groups_is_an_error_naming_both():
    with pytest.raises(ValueError, match="'device' is defined by runtime and by evaluation"):
        flat_options({"runtime": {"device": "cpu"}, "evaluation": {"device": "cuda"}})


def test_option_paths_spell_the_name_option_of_an_ingredient():
    assert option_path("dataset", "dataset") == "dataset.name"
    assert option_path("dataset", "eval_fold") == "dataset.eval_fold"
    assert option_path("", "seed") == "seed"


@pytest.mark.parametrize("script, groups", [
    (train_script, {"dataset", "episodes", "model", "optimisation", "runtime"}),
    (test_script, {"dataset", "model", "runtime", "evaluation"}),
])
def test_every_option_has_one_flat_name_that_leads_to_its_place(script, groups):
    config = nested_config(script, "SYNTHETIC")
    assert {k for k, v in config.items() if isinstance(v, dict)} == groups and groups <= set(INGREDIENTS)
    paths = script.ex.option_paths()
    assert set(paths) == set(flat_options(config))    # every option, by a unique flat name
    for name, path in paths.items():
        node = config
        for part in path.split("."):
            node = node[part]
        assert node == flat_options(config)[name], path


# ----------------------------------------------------------------------------- commands


def test_flat_and_dotted_names_give_the_same_run_config():
    flat = nested_config(train_script, "SYNTHETIC", eval_fold=2, n_steps=9, lr_step_size=3, device="cpu",
                         model="fafnet", min_size=10, num_workers=0)
    dotted = nested_config(train_script, "SYNTHETIC", **{
        "dataset.eval_fold": 2, "optimisation.n_steps": 9, "optimisation.lr_step_size": 3, "runtime.device": "cpu",
        "model.name": "fafnet", "episodes.min_size": 10, "num_workers": 0})
    assert flat == dotted
    assert flat["dataset"]["eval_fold"] == 2 and flat["optimisation"]["lr_milestones"] == [3, 6]


def test_the_flat_dataset_option_selects_the_dataset_like_the_named_config():
    by_option = nested_config(train_script, dataset="CHAOST2")
    by_name = nested_config(train_script, "CHAOST2")
    assert by_option["dataset"] == by_name["dataset"] and by_option["dataset"]["name"] == "CHAOST2"
    assert by_option["episodes"]["supervoxel_min_size"] == by_name["episodes"]["supervoxel_min_size"]


def test_an_option_given_by_both_names_is_an_error():
    with pytest.raises(ValueError, match="dataset.eval_fold is given twice"):
        train_script.ex.dotted_updates({"eval_fold": 1, "dataset.eval_fold": 2})


def test_the_command_line_accepts_both_names(tmp_path):
    argv = ["train.py", "print_config", "with", "SYNTHETIC", "eval_fold=3", "optimisation.lr=0.5",
            f"runs_dir={tmp_path}"]
    config = train_script.ex.run_commandline(argv).config
    assert config["dataset"]["eval_fold"] == 3 and config["optimisation"]["lr"] == 0.5
    assert config["runtime"]["runs_dir"] == str(tmp_path)


def test_an_error_names_the_option_by_its_path(tmp_path):
    with pytest.raises(ValueError, match=r"^config option dataset\.eval_fold=5 must be 0, 1, 2, 3 or 4$"):
        train_script.ex.run(config_updates={"runs_dir": str(tmp_path), "eval_fold": 5})
    with pytest.raises(ValueError, match=r"^config option model\.name='unet' is not a registered model"):
        test_script.ex.run(config_updates={"runs_dir": str(tmp_path), "model.name": "unet"})
    with pytest.raises(ValueError, match=r"^config option evaluation\.n_part=0 must be an integer >= 1$"):
        test_script.ex.run(config_updates={"runs_dir": str(tmp_path), "n_part": 0})
    # A rule across two options of a group (its rules function, after each option's own check).
    with pytest.raises(ValueError, match=r"^config option dataset\.image_size=\[65, 65\] differs from "
                                         r"dataset\.resample_in_plane=\[64, 64\]"):
        train_script.ex.run(config_updates={"runs_dir": str(tmp_path), "resample_in_plane": [64, 64],
                                            "image_size": [65, 65]})
    with pytest.raises(ValueError, match=r"^config option snapshot_interval=0 must be an integer >= 1$"):
        train_script.ex.run(config_updates={"runs_dir": str(tmp_path), "snapshot_interval": 0})


# ----------------------------------------------------------------------------- one owner per rule


def test_each_rule_belongs_to_the_group_that_defines_its_option():
    owners = {}
    for name, module in INGREDIENT_MODULES.items():
        scope = getattr(module, name).configurations[0]
        options = set(scope_option_names(scope))
        assert set(module.CHECKS) <= options, name
        for option in module.CHECKS:
            assert option not in owners, f"{option}: checked by {owners[option]} and {name}"
            owners[option] = name
    own = set(scope_option_names(train_script.ex.configurations[1])) | {"seed"}
    assert set(TRAINING_CHECKS) <= own
    # (channels_last is train.py's and the evaluation's: two experiments, two options.)
    of_training = {option for option, owner in owners.items() if owner != "evaluation"}
    assert not set(TRAINING_CHECKS) & of_training
    assert train_script.ex.configurations[1]._func is training_options


# ----------------------------------------------------------------------------- constructors


def test_call_with_options_fills_parameters_by_name_given_arguments_first():
    def build(model, lr, momentum=0.9, *args, **kwargs):
        return model, lr, momentum, kwargs

    options = {"lr": 0.1, "momentum": 0.5, "model": "fafnet", "unused": 1}
    assert call_with_options(build, options, model="the network") == ("the network", 0.1, 0.5, {})
    assert call_with_options(build, {"lr": 0.2}, model=None) == (None, 0.2, 0.9, {})
    with pytest.raises(TypeError, match="needs option 'lr'"):
        call_with_options(build, {"momentum": 0.5}, model=None)


# ----------------------------------------------------------------------------- start-up


def test_an_option_group_scans_no_modules_and_leaves_sacreds_settings_as_they_were():
    from sacred import SETTINGS

    from fafnet.cli.ingredients.base import new_ingredient
    before = SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES
    group = new_ingredient("group_of_a_test")
    assert (SETTINGS.DISCOVER_SOURCES, SETTINGS.DISCOVER_DEPENDENCIES) == before == ("sys", "sys")
    # Its own file only (the experiment that includes it lists every imported module).
    assert {source.filename for source in group.sources} == {__file__}
    # (Sacred always adds numpy, for its seeding.)
    assert {dependency.name for dependency in group.dependencies} <= {"numpy"} and group.path == "group_of_a_test"
    assert group.doc == __doc__
    for name, module in INGREDIENT_MODULES.items():
        assert {source.filename for source in getattr(module, name).sources} == {module.__file__}, name
