"""Result tables: reading results.json, the fold table, protocol checks, the groups join and
the `python utils.py` command line (fafnet.evaluation.results, utils.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fafnet.cli import results as utils
from fafnet.evaluation import results as tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {1: "spleen", 2: "right kidney", 3: "left kidney", 6: "liver"}


def protocol(fold, **changes):
    record = {"dataset": "SABS", "setting": 1, "setting2_protocol": None, "group": None,
              "test_classes": [1, 6], "eval_fold": fold, "supp_idx": [2], "n_part": 3,
              "image_size": [257, 257], "n_volumes": 30, "checkpoint": f"runs/fold{fold}/final.pth",
              "checkpoint_step": 42000, "training": {"n_steps": 42000, "optimizer": "sgd", "group": None,
                                                      "test_classes": [1, 6]},
              "pretrained_weights": "deeplabv3_resnet101_coco-586e9e4e.pth", "preprocessing": None,
              "code": {"commit": "abc", "dirty": False}}
    record.update(changes)
    return record


def write_results(folder, fold, dice, classes=(1, 6), skipped=(), **changes):
    os.makedirs(folder, exist_ok=True)
    entries = {str(c): {"name": NAMES[c], "dice_mean": d, "iou_mean": d / 2, "n_query_volumes": 6}
               for c, d in zip(classes, dice)}
    record = {"protocol": protocol(fold, test_classes=list(classes), **changes), "skipped": list(skipped),
              "classes": entries, "mean_dice": float(np.mean(dice)), "mean_iou": float(np.mean(dice)) / 2}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(record, f)
    return str(folder)


def test_fold_table_values(tmp_path):
    runs = [write_results(tmp_path / "b", 1, [0.6, 0.8]), write_results(tmp_path / "a", 0, [0.5, 0.9]),
            write_results(tmp_path / "c", 2, [0.7, 1.0])]
    header, rows = tables.aggregate_folds(runs)
    assert header == ["fold", "spleen", "liver", "Mean"]
    assert [r[0] for r in rows] == [0, 1, 2, "mean", "std"]
    assert rows[0][1:] == pytest.approx([50.0, 90.0, 70.0])
    assert rows[3][1:] == pytest.approx([60.0, 90.0, 75.0])               # means over folds
    # Fold means 70, 70, 85: sample std (ddof=1) = sqrt((25 + 25 + 100) / 2) = sqrt(75).
    assert rows[4][1:] == pytest.approx([10.0, 10.0, 75 ** 0.5])
    markdown = tables.fold_table_markdown(header, rows, title=tables.fold_table_header(runs))
    assert markdown.startswith("SABS fold 0/1/2, setting 1, support index [2], n_part 3")
    assert "| mean ± std | 60.00 ± 10.00 | 90.00 ± 10.00 | 75.00 ± 8.66 |" in markdown
    iou_rows = tables.aggregate_folds(runs, metric="iou")[1]
    assert iou_rows[3][1:] == pytest.approx([30.0, 45.0, 37.5])


@pytest.mark.parametrize("field, value", [
    ("setting", 2), ("supp_idx", [0]), ("n_part", 4), ("checkpoint_step", 30000),
    ("pretrained_weights", None), ("training", {"n_steps": 300, "optimizer": "adam", "group": None,
                                                "test_classes": [1, 6]}),
    ("preprocessing", {"route": "SABS", "parameters": {"window": [-125, 275]}}),
])
def test_folds_made_differently_are_not_joined(tmp_path, field, value):
    a = write_results(tmp_path / "a", 0, [0.5, 0.9])
    b = write_results(tmp_path / "b", 1, [0.6, 0.8], **{field: value})
    with pytest.raises(ValueError, match=f"differ in '{field}'"):
        tables.aggregate_folds([a, b])


def test_groups_protocol_joins_both_groups_of_each_fold(tmp_path):
    runs = []
    for fold in (0, 1):
        for group, classes, dice in ((0, (2, 3), [0.6, 0.7]), (1, (1, 6), [0.5, 0.9])):
            runs.append(write_results(tmp_path / f"f{fold}g{group}", fold, [d + 0.1 * fold for d in dice],
                                      classes=classes, setting=2, setting2_protocol="groups", group=group,
                                      training={"n_steps": 42000, "optimizer": "sgd", "group": group,
                                                "test_classes": list(classes)}))
    header, rows = tables.aggregate_folds(runs)
    assert header == ["fold", "spleen", "right kidney", "left kidney", "liver", "Mean"]
    assert rows[0][1:] == pytest.approx([50.0, 60.0, 70.0, 90.0, 67.5])
    assert rows[1][1:] == pytest.approx([60.0, 70.0, 80.0, 100.0, 77.5])
    with pytest.raises(ValueError, match="fold 0 group 1 appears twice"):
        tables.aggregate_folds(runs + [runs[1]])
    with pytest.raises(ValueError, match="different class groups"):
        tables.aggregate_folds(runs[:3])


def test_duplicate_folds_and_foreign_files_are_refused(tmp_path):
    a, b = write_results(tmp_path / "a", 0, [0.5, 0.9]), write_results(tmp_path / "b", 0, [0.6, 0.8])
    with pytest.raises(ValueError, match="fold 0 appears twice"):
        tables.aggregate_folds([a, b])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text('{"eval_fold": 0, "classes": {}, "mean_dice": 0.5}')
    with pytest.raises(ValueError, match="missing key 'protocol'"):
        tables.aggregate_folds([str(tmp_path / "old")])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        tables.aggregate_folds([str(tmp_path)])


def test_run_table_marks_skipped_classes(tmp_path):
    skip = {"class_id": 6, "class_name": "liver", "supp_idx": 2, "what": "query volume 4",
            "reason": "the class does not occur in this volume"}
    results = tables.load_results(write_results(tmp_path / "a", 0, [0.5, 0.9], skipped=[skip]))
    text = tables.results_table(results)
    assert "| liver * | 90.00 |" in text and "| spleen | 50.00 |" in text
    assert "skipped: class 6 (liver), query volume 4: the class does not occur" in text


def test_aggregate_command_line_writes_markdown_and_csv(tmp_path, capsys):
    runs = [write_results(tmp_path / f"f{k}", k, [0.5 + 0.1 * k, 0.9]) for k in range(2)]
    out = str(tmp_path / "table")
    assert utils.main(["aggregate", *runs, "--out", out]) == 0
    assert "| mean ± std | 55.00 ± 7.07 |" in capsys.readouterr().out
    markdown = open(out + ".md", encoding="utf-8").read()
    assert markdown.startswith("SABS fold 0/1, setting 1") and "| fold | spleen | liver | Mean |" in markdown
    csv_lines = open(out + ".csv", encoding="utf-8").read().splitlines()
    assert csv_lines[0] == "fold,spleen,liver,Mean"
    assert csv_lines[3] == "mean,55.0000,90.0000,72.5000"
    assert utils.main(["aggregate", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    mixed = write_results(tmp_path / "mixed", 2, [0.5, 0.5], n_part=4)
    assert utils.main(["aggregate", *runs, mixed]) == 2
    assert "differ in 'n_part'" in capsys.readouterr().err


def test_compare_command_gives_the_difference_per_class(tmp_path, capsys):
    trained = write_results(tmp_path / "trained", 0, [0.75, 0.5])
    untrained = write_results(tmp_path / "untrained", 0, [0.25, 0.125])
    assert utils.main(["compare", trained, untrained]) == 0
    out = capsys.readouterr().out
    assert "| spleen | 75.00 | 25.00 | +50.00 |" in out and "| liver | 50.00 | 12.50 | +37.50 |" in out
    assert "| **mean** | 62.50 | 18.75 | +43.75 |" in out
    other = write_results(tmp_path / "other", 0, [0.5, 0.5], classes=(2, 3))
    assert utils.main(["compare", trained, other]) == 2
    assert "evaluate different classes" in capsys.readouterr().err


def test_runs_command_lists_status(tmp_path, capsys):
    folder = tmp_path / "train" / "1"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "RUNNING", "heartbeat": "2000-01-01T00:00:00",
                                                 "experiment": {"name": "FAFNet-train"}}))
    assert utils.main(["runs", str(tmp_path / "train")]) == 0
    assert "FAFNet-train\tDIED" in capsys.readouterr().out


def test_metrics_and_tables_work_without_torch(tmp_path):
    """The metrics and the results tables must not need torch (a machine that only builds
    tables, a CI job that only aggregates)."""
    run = write_results(tmp_path / "a", 0, [0.5, 0.9])
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from fafnet.evaluation import metrics, results\n"
        "import utils\n"
        f"header, rows = results.aggregate_folds([{run!r}])\n"
        "assert rows[0][1:] == [50.0, 90.0, 70.0], rows\n"
        "assert metrics.dice_score([1, 1, 0], [1, 0, 0]) == 2 / 3\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- skipped classes, leakage


def write_skipping_run(folder, fold, dice):
    """A run whose second class (liver) was skipped: its scores are None, as test.py writes them."""
    path = write_results(folder, fold, [dice, 0.0])
    record = json.load(open(os.path.join(path, "results.json")))
    record["classes"]["6"].update(dice_mean=None, iou_mean=None, n_query_volumes=0)
    record["mean_dice"], record["mean_iou"] = dice, dice / 2
    record["skipped"] = [{"class_id": 6, "class_name": "liver", "supp_idx": 2, "what": "support volume 2",
                          "reason": "class 6 does not occur in the support volume"}]
    json.dump(record, open(os.path.join(path, "results.json"), "w"))
    return path


def test_a_skipped_class_is_marked_in_every_table_and_means_say_what_they_cover(tmp_path, capsys):
    skipping = write_skipping_run(tmp_path / "f0", 0, 0.5)
    complete = write_results(tmp_path / "f1", 1, [0.7, 0.9])
    text = tables.results_table(tables.load_results(skipping))
    assert "| liver * | n/a | n/a | 0 |" in text
    assert "| **mean** of 1 of 2 classes (spleen) | 50.00 | 25.00 | |" in text
    header, rows = tables.aggregate_folds([skipping, complete])
    assert rows[0] == [0, pytest.approx(50.0), None, pytest.approx(50.0)]     # fold 0's Mean: spleen only
    assert rows[2][1:] == pytest.approx([60.0, 90.0, 65.0])                  # liver: fold 1 only
    assert rows[3][2] == 0.0
    markdown = tables.fold_table_markdown(header, rows)
    assert "| 0 | 50.00 | n/a * | 50.00 * |" in markdown
    assert "| mean ± std | 60.00 ± 14.14 | 90.00 ± 0.00 * | 65.00 ± 21.21 * |" in markdown
    assert "\\* fold 0: liver skipped; its Mean covers spleen" in markdown
    assert "\\* liver: mean ± std over 1 of 2 folds" in markdown
    csv_lines = tables.fold_table_csv(header, rows).splitlines()
    assert csv_lines[0] == "fold,spleen,liver,Mean,note"
    assert csv_lines[1] == "0,50.0000,,50.0000,fold 0: liver skipped; its Mean covers spleen"
    assert csv_lines[3] == "mean,60.0000,90.0000,65.0000,liver: mean ± std over 1 of 2 folds"
    # A comparison joins runs of one fold: fold 1's complete run against a skipping run of fold 1.
    skipping_fold1 = write_skipping_run(tmp_path / "f1_skipping", 1, 0.5)
    comparison = tables.comparison_table(tables.load_results(complete), tables.load_results(skipping_fold1))
    assert "| liver * | 90.00 | n/a | n/a |" in comparison
    assert "| **mean** (of classes; baseline of 1 of 2 classes (spleen)) | 80.00 | 50.00 | +30.00 |" in comparison
    out = str(tmp_path / "table")
    assert utils.main(["aggregate", skipping, complete, "--out", out]) == 0
    assert "n/a *" in open(out + ".md", encoding="utf-8").read()


def test_fold_table_refuses_runs_whose_checkpoint_trained_on_their_test_volumes(tmp_path, capsys):
    leaked = {"status": "overlap", "overlap": [3, 4], "allow_leakage": True, "reason": "..."}
    clean = {"status": "clean", "overlap": [], "allow_leakage": False, "reason": ""}
    good = write_results(tmp_path / "a", 0, [0.5, 0.9], leakage=clean)
    bad = write_results(tmp_path / "b", 1, [0.6, 0.8], leakage=leaked)
    with pytest.raises(ValueError, match=r"b/results.json: its checkpoint was trained on volume\(s\) \[3, 4\] "
                                         r"of evaluated fold 1 \(evaluated with allow_leakage=True\)"):
        tables.aggregate_folds([good, bad])
    # Also from the training record alone: fold 1 holds volumes 3..5, the checkpoint trained on 3..9.
    record = json.load(open(os.path.join(good, "results.json")))
    record["protocol"].update(eval_fold=1, leakage=None)
    record["protocol"]["training"].update(dataset="SABS", eval_fold=0, volume_indices=list(range(3, 10)))
    record["fold_volumes"] = [3, 4, 5]
    os.makedirs(tmp_path / "c")
    json.dump(record, open(tmp_path / "c" / "results.json", "w"))
    with pytest.raises(ValueError, match=r"trained on volume\(s\) \[3, 4, 5\] of evaluated fold 1;"):
        tables.aggregate_folds([str(tmp_path / "c")])
    record["protocol"]["training"]["dataset"] = "CHAOST2"     # another dataset's volume 3 is another volume
    json.dump(record, open(tmp_path / "c" / "results.json", "w"))
    assert tables.aggregate_folds([str(tmp_path / "c")])[1][0][0] == 1
    # A run whose leakage was not checked joins the table with a warning.
    unchecked = write_results(tmp_path / "d", 1, [0.6, 0.8], leakage={**clean, "status": "unchecked",
                                                                        "reason": "an older snapshot"})
    assert utils.main(["aggregate", good, unchecked]) == 0
    assert "warning: " in capsys.readouterr().err


def test_training_fold_fields_do_not_stop_folds_joining(tmp_path):
    a = write_results(tmp_path / "a", 0, [0.5, 0.9], training={
        "n_steps": 42000, "optimizer": "sgd", "group": None, "test_classes": [1, 6], "eval_fold": 0,
        "volume_indices": [6, 7, 8], "image_files": ["image_6.nii.gz"]})
    b = write_results(tmp_path / "b", 1, [0.6, 0.8], training={
        "n_steps": 42000, "optimizer": "sgd", "group": None, "test_classes": [1, 6], "eval_fold": 1,
        "volume_indices": [0, 1, 2], "image_files": ["image_0.nii.gz"]})
    assert [r[0] for r in tables.aggregate_folds([a, b])[1]] == [0, 1, "mean", "std"]
