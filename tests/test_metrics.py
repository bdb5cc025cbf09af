"""Metrics, atomic writes, RNG state, checkpoint lookup and the fold aggregator (utils.py)."""
import json
import os
import random

import numpy as np
import pytest
import torch

import utils


# ----------------------------------------------------------------------------- Dice / IoU


def test_dice_and_iou_against_hand_computed_values():
    prediction = np.array([[1, 1, 0, 0],
                           [1, 1, 0, 0]])
    label = np.array([[0, 1, 1, 0],
                      [0, 1, 1, 0]])
    # TP = 2, FP = 2, FN = 2: Dice = 4 / 8, IoU = 2 / 6.
    assert utils.binary_confusion(prediction, label) == (2, 2, 2)
    assert utils.dice_score(prediction, label) == pytest.approx(0.5)
    assert utils.iou_score(prediction, label) == pytest.approx(1 / 3)


def test_dice_over_a_volume_pools_counts_across_slices():
    # Slice 0: TP 1, FP 0, FN 1; slice 1: TP 3, FP 1, FN 0 -> pooled TP 4, FP 1, FN 1.
    prediction = np.zeros((2, 2, 2), dtype=bool)
    label = np.zeros((2, 2, 2), dtype=bool)
    prediction[0, 0, 0] = label[0, 0, 0] = label[0, 0, 1] = True
    prediction[1] = True
    label[1] = [[True, True], [True, False]]
    assert utils.binary_confusion(prediction, label) == (4, 1, 1)
    assert utils.dice_score(prediction, label) == pytest.approx(8 / 10)
    assert utils.iou_score(prediction, label) == pytest.approx(4 / 6)


def test_perfect_and_disjoint_masks():
    mask = np.eye(5, dtype=np.uint8)
    assert utils.dice_score(mask, mask) == 1.0 and utils.iou_score(mask, mask) == 1.0
    assert utils.dice_score(mask, 1 - mask) == 0.0 and utils.iou_score(mask, 1 - mask) == 0.0


def test_empty_cases_follow_the_documented_convention():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert utils.dice_score(empty, empty) == 1.0      # both empty: perfect agreement
    assert utils.iou_score(empty, empty) == 1.0
    assert utils.dice_score(empty, full) == 0.0       # empty prediction, non-empty label
    assert utils.iou_score(empty, full) == 0.0
    assert utils.dice_score(full, empty) == 0.0       # non-empty prediction, empty label
    assert utils.iou_score(full, empty) == 0.0


def test_metrics_accept_tensors_and_reject_mismatched_shapes():
    prediction = torch.tensor([[1, 0], [1, 0]])
    label = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    assert utils.dice_score(prediction, label) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) != label shape \(4,\)"):
        utils.binary_confusion(prediction, torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        utils.dice_from_counts(-1, 0, 0)


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_file_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "out" / "results.json"
    utils.atomic_write_json({"a": 1}, str(path))
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with utils.atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"a": 1}      # the old file is intact
    assert os.listdir(path.parent) == ["results.json"]   # and no temporary is left


def test_atomic_torch_save_round_trip(tmp_path):
    path = str(tmp_path / "snapshot.pth")
    utils.atomic_torch_save({"w": torch.arange(4.0)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))


# ----------------------------------------------------------------------------- RNG, devices


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    utils.seed_everything(7)
    state = utils.capture_rng_state()
    path = str(tmp_path / "rng.pth")
    utils.atomic_torch_save(state, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    utils.seed_everything(99)
    utils.restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resolve_device():
    assert utils.resolve_device("cpu") == torch.device("cpu")
    assert utils.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device='tpu'"):
        utils.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            utils.resolve_device("cuda")


# ----------------------------------------------------------------------------- checkpoints


def _fake_run(runs: str, run_id: int, status: str, steps):
    run_dir = os.path.join(runs, str(run_id))
    os.makedirs(os.path.join(run_dir, "snapshots"))
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"status": status}, f)
    for step in steps:
        open(utils.snapshot_path(run_dir, step), "w").close()
    return run_dir


def test_resolve_checkpoint_file_run_and_runs_folder(tmp_path):
    runs = str(tmp_path / "train")
    first = _fake_run(runs, 1, "COMPLETED", [100, 200])
    _fake_run(runs, 2, "COMPLETED", [50])
    _fake_run(runs, 10, "FAILED", [300])         # newer but failed: not chosen
    _fake_run(runs, 11, "COMPLETED", [])         # no snapshots: not chosen
    assert utils.resolve_checkpoint(first) == utils.snapshot_path(first, 200)
    assert utils.resolve_checkpoint(runs) == utils.snapshot_path(os.path.join(runs, "2"), 50)
    file = utils.snapshot_path(first, 100)
    assert utils.resolve_checkpoint(file) == file
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        utils.resolve_checkpoint(str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="no completed training run"):
        utils.resolve_checkpoint(str(tmp_path))


# ----------------------------------------------------------------------------- aggregation


def _results(folder, fold, dice):
    os.makedirs(folder, exist_ok=True)
    classes = {str(c): {"name": n, "dice_mean": d, "iou_mean": d / 2, "per_volume": []}
               for (c, n), d in zip([(1, "spleen"), (6, "liver")], dice)}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"eval_fold": fold, "classes": classes, "mean_dice": float(np.mean(dice))}, f)
    return str(folder)


def test_aggregate_folds_table_values(tmp_path):
    runs = [_results(tmp_path / "b", 1, [0.6, 0.8]), _results(tmp_path / "a", 0, [0.5, 0.9]),
            _results(tmp_path / "c", 2, [0.7, 1.0])]
    header, rows = utils.aggregate_folds(runs)
    assert header == ["fold", "spleen", "liver", "Mean"]
    assert [r[0] for r in rows] == [0, 1, 2, "mean", "std"]
    assert rows[0][1:] == pytest.approx([50.0, 90.0, 70.0])
    assert rows[3][1:] == pytest.approx([60.0, 90.0, 75.0])               # means over folds
    # Fold means 70, 70, 85: sample std (ddof=1) = sqrt((25 + 25 + 100) / 2) = sqrt(75).
    assert rows[4][1:] == pytest.approx([10.0, 10.0, 75 ** 0.5])
    markdown = utils.fold_table_markdown(header, rows)
    assert "| mean ± std | 60.00 ± 10.00 | 90.00 ± 10.00 | 75.00 ± 8.66 |" in markdown
    iou_rows = utils.aggregate_folds(runs, metric="iou")[1]
    assert iou_rows[3][1:] == pytest.approx([30.0, 45.0, 37.5])


def test_aggregate_rejects_duplicate_folds_and_foreign_files(tmp_path):
    a, b = _results(tmp_path / "a", 0, [0.5, 0.9]), _results(tmp_path / "b", 0, [0.6, 0.8])
    with pytest.raises(ValueError, match="fold 0 appears twice"):
        utils.aggregate_folds([a, b])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"eval_fold": 0}')
    with pytest.raises(ValueError, match="missing key 'classes'"):
        utils.aggregate_folds([str(tmp_path / "bad")])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        utils.aggregate_folds([str(tmp_path)])


def test_aggregate_command_line_writes_markdown_and_csv(tmp_path, capsys):
    runs = [_results(tmp_path / f"f{k}", k, [0.5 + 0.1 * k, 0.9]) for k in range(2)]
    out = str(tmp_path / "table")
    assert utils.main(["aggregate", *runs, "--out", out]) == 0
    assert "| mean ± std | 55.00 ± 7.07 |" in capsys.readouterr().out
    assert open(out + ".md").read().startswith("| fold | spleen | liver | Mean |")
    csv_lines = open(out + ".csv").read().splitlines()
    assert csv_lines[0] == "fold,spleen,liver,Mean"
    assert csv_lines[3] == "mean,55.0000,90.0000,72.5000"
    assert utils.main(["aggregate", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err
