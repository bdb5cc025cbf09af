"""A study (fafnet-study): variants x seeds on the phantom through the real commands, resumed
where it stopped, reported with paired statistics; and what a study refuses."""
import csv
import json
import os

import pytest

from fafnet.cli import study as study_cli
from fafnet.training.loop import make_train_dataset
from tests.helpers import SIZE, TRAINING, options_of

TINY_STUDY = {
    "name": "phantom",
    "named_configs": ["SYNTHETIC"],
    "options": {**TRAINING, "n_steps": 2, "snapshot_interval": 2, "image_size": [SIZE, SIZE], "test_classes": [1, 6],
                "device": "cpu", "setting": 2, "setting2_protocol": "any", "save_predictions": False,
                "save_figures": False, "eval_batch_size": 8},
    "variants": {"baseline": {"model": "fafnet", "model_options": {"icm": False, "aff": False, "threshold": "scalar"}},
                 "fafnet": {"model": "fafnet"}},
    "seeds": [2025, 2026],
    "folds": [0],
    "supp_idx": [0, 1],
    "reference": "baseline",
}


def write_study(folder, phantom, **changes) -> str:
    spec = json.loads(json.dumps(TINY_STUDY))
    spec["options"]["data_dir"] = phantom
    spec["out"] = str(folder / "out")
    spec.update(changes)
    path = folder / "study.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.fixture(scope="module")
def finished_study(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder, phantom)
    # The first unit is trained to the end but not evaluated, as if the study had been stopped.
    study = study_cli.load_study(path)
    study_cli.check_study_folder(study)
    first = study.units()[0]
    from fafnet.cli.train import experiment
    experiment().run(config_updates=first.options(), named_configs=study.named_configs)
    assert first.state() == "evaluate"
    assert study_cli.main(["run", path]) == 0
    return path, study


def test_units_go_seed_by_seed_and_every_one_is_done(finished_study, capsys):
    path, study = finished_study
    assert [(u.variant, u.seed) for u in study.units()] == [
        ("baseline", 2025), ("fafnet", 2025), ("baseline", 2026), ("fafnet", 2026)]
    assert all(unit.state() == "done" for unit in study.units())
    # Each unit trained once (the stopped one was evaluated, not trained again).
    assert all(len(unit.training_runs()) == 1 for unit in study.units())
    assert study_cli.main(["status", path]) == 0
    assert capsys.readouterr().out.count("\tdone\t") == 4
    unit = study.units()[1]
    record = json.load(open(os.path.join(unit.folder, "unit.json")))
    assert record["variant"] == "fafnet" and record["seed"] == 2025 and record["evaluation"] == unit.evaluation()
    results = json.load(open(os.path.join(unit.evaluation(), "results.json")))
    assert results["protocol"]["supp_idx"] == [0, 1] and results["protocol"]["training"]["seed"] == 2025
    assert results["protocol"]["model_options"]["icm"] is True


def test_the_report_pairs_the_variants_and_writes_four_files(finished_study, capsys):
    path, study = finished_study
    assert study_cli.main(["report", path]) == 0
    out = capsys.readouterr().out
    assert "fafnet" in out and "baseline" in out
    folder = os.path.join(study.out, "report")
    for name in ("report.md", "report.csv", "report.json", "report.png"):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    report = json.load(open(os.path.join(folder, "report.json")))
    comparison = report["comparison"]["comparisons"][0]
    assert comparison["variant"] == "fafnet" and comparison["reference"] == "baseline"
    # 2 seeds x 2 support indices x 2 classes x 2 query volumes, paired.
    assert comparison["classes"]["mean"]["n_pairs"] == 16
    assert report["summary"]["variants"]["fafnet"]["classes"]["mean"]["n_runs"] == 2
    rows = list(csv.DictReader(open(os.path.join(folder, "report.csv"))))
    assert {row["variant"] for row in rows} >= {"fafnet", "baseline"}


def test_two_variants_with_one_seed_see_the_same_episodes(phantom):
    configs = [options_of("train", "SYNTHETIC", data_dir=phantom, image_size=[SIZE, SIZE], setting=2,
                          setting2_protocol="any", test_classes=[1, 6], min_size=100, **variant)
               for variant in TINY_STUDY["variants"].values()]
    first, second = (make_train_dataset(config) for config in configs)
    for index in (0, 1, 7, 100):
        a, b = first[index], second[index]
        assert (a["class_id"], a["volume_index"], a["slice_indices"]) == (b["class_id"], b["volume_index"],
                                                                           b["slice_indices"])
        assert all((a[key] == b[key]).all() for key in ("support_images", "support_masks", "query_images",
                                                         "query_labels"))


@pytest.mark.parametrize("change, message", [
    ({"variants": {"a": {"model": "fafnet", "lr": 0.1}}}, "variant 'a' sets lr: a variant is a model and its options"),
    ({"options": {"seed": 3}}, "options.seed: set by the study per unit"),
    ({"options": {"model": "adnet"}}, "options.model: set by the study per unit or per variant"),
    ({"reference": "nope"}, "reference 'nope' is not a variant"),
    ({"seeds": [1, 1]}, r"seeds must be a non-empty list of distinct integers"),
    ({"bogus": 1}, "unknown field 'bogus'"),
])
def test_a_bad_study_file_is_named(change, message, tmp_path, phantom):
    path = write_study(tmp_path, phantom, **change)
    with pytest.raises(ValueError, match=message):
        study_cli.load_study(path)


def test_a_study_folder_keeps_its_protocol(tmp_path, phantom):
    path = write_study(tmp_path, phantom)
    study_cli.check_study_folder(study_cli.load_study(path))
    changed = write_study(tmp_path, phantom, options={**TINY_STUDY["options"], "data_dir": phantom, "n_steps": 3})
    with pytest.raises(ValueError, match="started with other options"):
        study_cli.check_study_folder(study_cli.load_study(changed))
