"""Comparing methods (fafnet.evaluation.comparison, docs/protocol.md section 17): the protocol
check, the per-variant summary, the paired differences with their bootstrap interval and
Wilcoxon p-value, and the four report files, on hand-made results with known answers.

The runs: variants A (reference) and B, seeds 1 and 2, fold 0, support index 2, classes 1
(spleen) and 6 (liver), query volumes 0, 1, 3. B's Dice is A's plus the differences below.
"""
import copy
import csv
import json
import os

import numpy as np
import pytest

from fafnet.evaluation import comparison as cmp

NAMES = {1: "spleen", 6: "liver"}
VOLUMES = (0, 1, 3)
A_DICE = {1: {1: [0.60, 0.70, 0.80], 6: [0.80, 0.85, 0.90]},     # seed -> class -> per query volume
          2: {1: [0.50, 0.60, 0.70], 6: [0.70, 0.80, 0.90]}}
B_MINUS_A = {1: {1: [0.05, 0.01, 0.03], 6: [-0.015, 0.025, 0.035]},
             2: {1: [0.02, 0.06, 0.04], 6: [0.045, -0.055, 0.065]}}
FEW = 200            # resamples where the value of the interval does not matter


def protocol(fold=0, seed=1, model="fafnet", **changes):
    fold_volumes = [0, 1, 2, 3] if fold == 0 else [4, 5, 6, 7]
    training = {"model": model, "model_options": {"aff": True} if model == "fafnet" else {},
                "dataset": "SABS", "setting": 1, "test_classes": [1, 6], "n_steps": 1000, "optimizer": "sgd",
                "lr": 0.001, "lr_milestones": [500], "pseudo_labels": "supervoxels", "seed": seed,
                "image_size": [128, 128], "pretrained_weights": "resnet101.pth", "eval_fold": fold,
                "volume_indices": [v for v in range(8) if v not in fold_volumes],
                "image_files": [f"image_{v}.nii.gz" for v in range(8) if v not in fold_volumes]}
    training.update(changes.pop("training", {}))
    record = {"model": model, "model_options": dict(training["model_options"]), "dataset": "SABS", "setting": 1,
              "setting2_protocol": None, "group": None, "test_classes": [1, 6], "eval_fold": fold,
              "supp_idx": [2], "n_part": 3, "image_size": [128, 128], "resample_in_plane": None, "n_volumes": 8,
              "checkpoint": f"runs/{model}/seed{seed}/fold{fold}/snapshots/1000.pth", "checkpoint_step": 1000,
              "training": training, "pretrained_weights": "resnet101.pth",
              "preprocessing": {"manifest": "m.json", "route": "sabs", "parameters": {"window": [-125, 275]}},
              "code": {"commit": "abc123", "dirty": False},
              "leakage": {"status": "clean", "training_fold": fold, "training_volumes": training["volume_indices"],
                          "evaluated_fold": fold, "evaluated_volumes": fold_volumes, "overlap": [], "reason": "",
                          "allow_leakage": False}}
    record.update(changes)
    return record


def results(per_class, fold=0, seed=1, model="fafnet", supports=None, **changes):
    """A results.json dict; per_class: class -> Dice per query volume (support index 2), or
    supports: support index -> class -> Dice per query volume."""
    supports = supports or {2: per_class}
    per_support, classes = {}, {}
    for supp_idx, dice in supports.items():
        entries = {}
        for class_id, values in dice.items():
            rows = [{"volume": v, "image": f"image_{v}.nii.gz", "dice": d, "iou": d / (2 - d), "tp": 1, "fp": 0,
                     "fn": 0, "n_slices": 5} for v, d in zip(VOLUMES, values)]
            entries[str(class_id)] = {"name": NAMES[class_id], "dice_mean": float(np.mean(values)) if values else None,
                                      "per_volume": rows}
        per_support[str(supp_idx)] = {"support_volume": supp_idx, "classes": entries}
    for class_id in next(iter(supports.values())):
        means = [s["classes"][str(class_id)]["dice_mean"] for s in per_support.values()]
        means = [m for m in means if m is not None]
        classes[str(class_id)] = {"name": NAMES[class_id], "dice_mean": float(np.mean(means)) if means else None}
    scored = [c["dice_mean"] for c in classes.values() if c["dice_mean"] is not None]
    return {"protocol": protocol(fold, seed, model, **changes), "skipped": [], "classes": classes,
            "mean_dice": float(np.mean(scored)), "supports": per_support, "fold_volumes": [0, 1, 2, 3]}


def run(variant, seed, per_class, fold=0, **changes):
    model = "fafnet" if variant == "A" else "adnet"
    return {"variant": variant, "seed": seed, "fold": fold, "path": f"runs/{variant}{seed}f{fold}/results.json",
            "results": results(per_class, fold, seed, model, **changes)}


def b_dice(seed, differences=B_MINUS_A):
    return {c: [a + d for a, d in zip(A_DICE[seed][c], differences[seed][c])] for c in (1, 6)}


def records(differences=B_MINUS_A):
    return [run("A", 1, A_DICE[1]), run("A", 2, A_DICE[2]),
            run("B", 1, b_dice(1, differences)), run("B", 2, b_dice(2, differences))]


# ----------------------------------------------------------------------------- summary


def test_variant_summary_mean_and_std_over_runs():
    summary = cmp.variant_summary(records(), n_resamples=FEW)
    a = summary["variants"]["A"]["classes"]
    # spleen: run Dice 0.70 (seed 1) and 0.60 (seed 2); liver 0.85 and 0.80.
    assert a["1"]["mean"] == pytest.approx(0.65) and a["1"]["std"] == pytest.approx(0.1 / np.sqrt(2))
    assert a["6"]["mean"] == pytest.approx(0.825) and a["6"]["std"] == pytest.approx(0.05 / np.sqrt(2))
    # mean over classes per run: (0.70 + 0.85) / 2 = 0.775, (0.60 + 0.80) / 2 = 0.70
    assert a["mean"]["mean"] == pytest.approx(0.7375) and a["mean"]["std"] == pytest.approx(0.075 / np.sqrt(2))
    assert a["1"]["n_runs"] == 2 and a["1"]["name"] == "spleen"
    b = summary["variants"]["B"]["classes"]
    # spleen: 0.70 + mean(0.05, 0.01, 0.03) = 0.73 and 0.60 + mean(0.02, 0.06, 0.04) = 0.64
    assert b["1"]["mean"] == pytest.approx(0.685) and b["1"]["std"] == pytest.approx(0.09 / np.sqrt(2))
    assert [r["dice"]["1"] for r in summary["variants"]["B"]["runs"]] == pytest.approx([0.73, 0.64])
    for variant in ("A", "B"):
        for entry in summary["variants"][variant]["classes"].values():
            low, high = entry["ci"]
            assert low <= entry["mean"] <= high and low < high
    assert [c["id"] for c in summary["classes"]] == ["1", "6"]
    assert summary["protocol"]["seeds"] == [1, 2] and summary["protocol"]["folds"] == [0]


def test_a_single_run_has_no_std():
    summary = cmp.variant_summary([run("A", 1, A_DICE[1])], n_resamples=FEW)
    entry = summary["variants"]["A"]["classes"]["1"]
    assert entry["n_runs"] == 1 and entry["std"] is None and entry["mean"] == pytest.approx(0.70)


def test_summary_bootstrap_resamples_volumes_within_each_run():
    # Constant Dice inside each run: resampling a run's own volumes cannot move its Dice, so the
    # interval of the mean over runs collapses to it (pooling volumes across runs would not).
    flat = [run("A", 1, {1: [0.6] * 3, 6: [0.6] * 3}), run("A", 2, {1: [0.8] * 3, 6: [0.8] * 3})]
    entry = cmp.variant_summary(flat, n_resamples=FEW)["variants"]["A"]["classes"]
    assert entry["1"]["ci"] == pytest.approx([0.7, 0.7], abs=1e-12)
    assert entry["mean"]["ci"] == pytest.approx([0.7, 0.7], abs=1e-12)


def test_summary_bootstrap_percentiles_of_a_known_distribution():
    # One run, query volumes with Dice 0, 1 and 0.5: a resample of three volumes is all zeros
    # (mean 0) with probability 1/27 = 3.7 % > 2.5 %, all ones likewise, so the 95 % interval
    # is [0, 1] around the mean 0.5.
    one = [run("A", 1, {1: [0.0, 1.0, 0.5], 6: [0.5, 0.5, 0.5]})]
    entry = cmp.variant_summary(one, n_resamples=4000)["variants"]["A"]["classes"]
    assert entry["1"]["mean"] == pytest.approx(0.5) and entry["1"]["ci"] == [0.0, 1.0]
    # The class mean resamples the same volumes: (d + 0.5) / 2, so [0.25, 0.75].
    assert entry["mean"]["ci"] == pytest.approx([0.25, 0.75])


def test_several_support_indices_average_like_the_results():
    supports = {2: {1: [0.6, 0.7, 0.8], 6: [0.8, 0.8, 0.8]}, 5: {1: [0.2, 0.3, 0.4], 6: [0.6, 0.6, 0.6]}}
    one = [{"variant": "A", "seed": 1, "fold": 0, "path": "r.json",
            "results": results(None, supports=supports, supp_idx=[2, 5])}]
    entry = cmp.variant_summary(one, n_resamples=FEW)["variants"]["A"]["classes"]
    assert entry["1"]["mean"] == pytest.approx((0.7 + 0.3) / 2)
    assert entry["6"]["ci"] == pytest.approx([0.7, 0.7], abs=1e-12)   # constant per support


# ----------------------------------------------------------------------------- paired differences


def test_paired_differences_with_known_answers():
    result = cmp.paired_comparison(records(), "A", n_resamples=FEW)
    assert result["reference"] == "A" and [c["variant"] for c in result["comparisons"]] == ["B"]
    classes = result["comparisons"][0]["classes"]
    spleen, liver, both = classes["1"], classes["6"], classes["mean"]
    # spleen: 0.05, 0.01, 0.03, 0.02, 0.06, 0.04 -> mean 0.21 / 6; all 6 positive, distinct:
    # exact two-sided p = 2 * P(W- = 0) = 2 * 1/2**6 = 0.03125
    assert spleen["mean_difference"] == pytest.approx(0.035) and spleen["n_pairs"] == 6
    assert spleen["p_value"] == pytest.approx(2 / 64) and spleen["p_value_reason"] is None
    assert spleen["statistic"] == 0
    # liver: -0.015, 0.025, 0.035, 0.045, -0.055, 0.065 -> mean 0.1 / 6; ranks of |d| 1..6, the
    # negative ones 1 + 5 = 6 = T; subsets of {1..6} with rank sum <= 6: 1+1+1+2+2+3+4 = 14,
    # so p = 2 * 14 / 64 = 0.4375
    assert liver["mean_difference"] == pytest.approx(0.1 / 6) and liver["n_pairs"] == 6
    assert liver["statistic"] == 6 and liver["p_value"] == pytest.approx(28 / 64)
    # over all classes: the 12 pairs pooled, mean (0.21 + 0.1) / 12; |d| ranks 1..12 with the
    # negative ones at 2 (0.015) and 10 (0.055): T = 12, p = 2 * #{subsets of 1..12 with sum <= 12} / 2**12
    assert both["mean_difference"] == pytest.approx(0.31 / 12) and both["n_pairs"] == 12
    ways = [1] + [0] * 12                       # ways[s]: subsets of the ranks so far with sum s
    for rank in range(1, 13):
        ways = [w + (ways[s - rank] if s >= rank else 0) for s, w in enumerate(ways)]
    assert both["statistic"] == 12 and both["p_value"] == pytest.approx(2 * sum(ways) / 4096)
    for entry in classes.values():
        low, high = entry["ci"]
        assert low <= entry["mean_difference"] <= high and low < high
    assert result["comparisons"][0]["unpaired"] == {"variant": 0, "reference": 0}


def test_equal_differences_collapse_the_interval():
    constant = {s: {c: [0.02, 0.02, 0.02] for c in (1, 6)} for s in (1, 2)}
    entry = cmp.paired_comparison(records(constant), "A", n_resamples=FEW)["comparisons"][0]["classes"]
    for key in ("1", "6", "mean"):
        assert entry[key]["mean_difference"] == pytest.approx(0.02)
        assert entry[key]["ci"] == pytest.approx([0.02, 0.02], abs=1e-12)
    assert entry["1"]["p_value"] == pytest.approx(2 / 64)      # six equal positive differences


def test_pair_bootstrap_resamples_volumes_within_seeds_with_all_their_pairs():
    # Seed 1: every difference +0.1, seed 2: every difference -0.1; resampling volumes within
    # each seed keeps both halves, so the pooled mean stays 0 (resampling across seeds would not).
    by_seed = {1: {c: [0.1] * 3 for c in (1, 6)}, 2: {c: [-0.1] * 3 for c in (1, 6)}}
    entry = cmp.paired_comparison(records(by_seed), "A", n_resamples=FEW)["comparisons"][0]["classes"]
    assert entry["mean"]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    # Spleen +d and liver -d on every volume: a drawn volume brings both classes, so the pooled
    # mean stays 0 while each class alone varies.
    mirrored = {s: {1: [0.05, 0.01, 0.03], 6: [-0.05, -0.01, -0.03]} for s in (1, 2)}
    entry = cmp.paired_comparison(records(mirrored), "A", n_resamples=FEW)["comparisons"][0]["classes"]
    assert entry["mean"]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert entry["1"]["ci"][0] < entry["1"]["ci"][1]


def test_all_zero_differences_give_no_p_value_with_its_reason():
    zero = {s: {c: [0.0, 0.0, 0.0] for c in (1, 6)} for s in (1, 2)}
    entry = cmp.paired_comparison(records(zero), "A", n_resamples=FEW)["comparisons"][0]["classes"]["1"]
    assert entry["p_value"] is None and "every paired difference is 0" in entry["p_value_reason"]
    assert entry["mean_difference"] == 0 and entry["ci"] == [0.0, 0.0] and entry["n_pairs"] == 6
    one = cmp.wilcoxon_test([0.0, 0.0, 0.3])
    assert one["p_value"] is None and "fewer than 2 non-zero" in one["reason"] and one["n_nonzero"] == 1


def test_only_pairs_present_in_both_count():
    extra = records() + [run("B", 3, A_DICE[1])]          # seed 3 has no reference run
    result = cmp.paired_comparison(extra, "A", n_resamples=FEW)["comparisons"][0]
    assert result["classes"]["1"]["n_pairs"] == 6 and result["unpaired"] == {"variant": 6, "reference": 0}
    assert result["classes"]["1"]["mean_difference"] == pytest.approx(0.035)


def test_the_bootstrap_is_reproducible_with_its_seed():
    first = cmp.paired_comparison(records(), "A", n_resamples=FEW, seed=7)
    again = cmp.paired_comparison(records(), "A", n_resamples=FEW, seed=7)
    other = cmp.paired_comparison(records(), "A", n_resamples=FEW, seed=8)
    ci = lambda r: r["comparisons"][0]["classes"]["mean"]["ci"]       # noqa: E731
    assert ci(first) == ci(again) and ci(first) != ci(other)
    def summary(seed):
        return cmp.variant_summary(records(), n_resamples=FEW, seed=seed)["variants"]["B"]["classes"]["6"]["ci"]

    assert summary(3) == summary(3) and summary(3) != summary(4)


def test_the_defaults_are_10000_resamples_with_a_fixed_seed():
    result = cmp.paired_comparison(records(), "A")
    assert result["bootstrap"]["n_resamples"] == 10000 and result["bootstrap"]["seed"] == cmp.BOOTSTRAP_SEED
    entry = result["comparisons"][0]["classes"]["mean"]
    assert entry["ci"][0] < entry["mean_difference"] < entry["ci"][1]
    assert entry["n_resamples_undefined"] == 0
    assert cmp.paired_comparison(records(), "A")["comparisons"][0]["classes"]["mean"]["ci"] == entry["ci"]
    summary = cmp.variant_summary(records())
    assert summary["bootstrap"]["n_resamples"] == 10000
    mean = summary["variants"]["A"]["classes"]["mean"]
    assert mean["ci"][0] < mean["mean"] < mean["ci"][1]


def test_an_unknown_reference_is_refused():
    with pytest.raises(ValueError, match="reference variant 'C' is not among"):
        cmp.paired_comparison(records(), "C", n_resamples=FEW)


# ----------------------------------------------------------------------------- protocol check


@pytest.mark.parametrize("change, field, shown", [
    ({"image_size": [256, 256]}, "protocol.image_size", "[128, 128]"),
    ({"n_part": 5}, "protocol.n_part", "3"),
    ({"training": {"n_steps": 2000}}, "protocol.training.n_steps", "1000"),
    ({"supp_idx": [3]}, "protocol.supp_idx", "[2]"),
    ({"preprocessing": None}, "protocol.preprocessing", '{"manifest": "m.json", "parameters"'),
])
def test_the_protocol_check_names_the_field_and_the_runs(change, field, shown):
    runs = records()
    runs[3] = run("B", 2, b_dice(2), **change)
    with pytest.raises(ValueError) as error:
        cmp.check_same_protocol(runs)
    message = str(error.value)
    assert f"runs differ in {field}: {shown}" in message and "(runs/A1f0/results.json) vs " in message
    assert "(runs/B2f0/results.json); a comparison needs one protocol" in message


def test_the_protocol_check_accepts_seeds_models_checkpoints_commits_and_folds():
    runs = records()
    runs[1]["results"]["protocol"]["code"] = {"commit": "def456", "dirty": True}
    runs[2]["results"]["protocol"]["checkpoint"] = "elsewhere/final.pth"
    runs += [run("A", 1, A_DICE[1], fold=1), run("B", 1, b_dice(1), fold=1)]
    for r in runs[-2:]:
        r["results"]["fold_volumes"] = [4, 5, 6, 7]
    cmp.check_same_protocol(runs)                   # models, seeds, checkpoints, commits, folds differ
    summary = cmp.variant_summary(runs, n_resamples=FEW)
    code = {c["commit"]: len(c["runs"]) for c in summary["protocol"]["code"]}
    assert code == {"abc123": 5, "def456": 1}
    assert summary["protocol"]["folds"] == [0, 1] and summary["variants"]["A"]["classes"]["1"]["n_runs"] == 3
    assert summary["protocol"]["variants"]["B"]["model"] == "adnet"
    common = summary["protocol"]["common"]
    assert "code" not in common and "checkpoint" not in common and "seed" not in common["training"]
    assert common["image_size"] == [128, 128] and common["training"]["n_steps"] == 1000


def test_the_free_fields_are_the_variant_seed_fold_checkpoint_code_and_leakage_files():
    assert set(cmp.FREE_FIELDS) >= {"model", "model_options", "training.model", "training.model_options",
                                    "training.seed", "checkpoint", "code", "eval_fold", "training.eval_fold",
                                    "training.volume_indices", "training.image_files"}
    assert not {"image_size", "n_part", "training", "training.n_steps", "supp_idx", "dataset",
                "leakage", "leakage.status"} & set(cmp.FREE_FIELDS)


def test_duplicate_runs_are_refused():
    with pytest.raises(ValueError, match=r"variant 'A', seed 1, fold 0 is given twice: runs/A1f0/results.json"):
        cmp.check_same_protocol(records() + [dict(run("A", 1, A_DICE[1]), path="copy/results.json")])


def test_a_run_without_a_class_score_is_refused():
    runs = records()
    broken = runs[2]["results"]
    broken["classes"]["6"]["dice_mean"] = None
    broken["skipped"] = [{"class_id": 6, "class_name": "liver", "supp_idx": 2, "what": "support volume 2",
                          "reason": "no liver"}]
    with pytest.raises(ValueError, match=r"runs/B1f0/results.json has no score for class 6 \(liver\) "
                                         r"\(skipped: support volume 2: no liver\), which runs/A1f0"):
        cmp.check_same_protocol(runs)


def test_other_inconsistent_runs_are_refused():
    runs = records()
    runs[3]["results"]["protocol"]["model_options"] = {"something": 1}
    with pytest.raises(ValueError, match=r"runs of variant 'B' differ in protocol.model_options"):
        cmp.check_same_protocol(runs)
    runs = records()
    runs[1]["seed"] = 5
    with pytest.raises(ValueError, match="given as seed 5 but its checkpoint was trained with seed 2"):
        cmp.check_same_protocol(runs)
    runs = records()
    runs[0]["fold"] = 1
    with pytest.raises(ValueError, match="given as fold 1 but its protocol says eval_fold 0"):
        cmp.check_same_protocol(runs)
    runs = records()
    runs[0]["results"]["classes"]["1"]["dice_mean"] = 0.9
    with pytest.raises(ValueError, match="dice_mean 0.900000 is not the mean of its per-volume Dice"):
        cmp.variant_summary(runs, n_resamples=FEW)
    runs = [copy.deepcopy(r) for r in records()]
    for r in runs:
        r["results"]["protocol"]["training"]["volume_indices"] = [0, 4, 5]
    with pytest.raises(ValueError, match=r"trained on volume\(s\) \[0\] of evaluated fold 0"):
        cmp.check_same_protocol(runs)


# ----------------------------------------------------------------------------- writers


def test_write_report_writes_the_four_files(tmp_path):
    runs = records()
    runs[1]["results"]["protocol"]["code"] = {"commit": "def456", "dirty": True}
    summary = cmp.variant_summary(runs, n_resamples=FEW)
    comparison = cmp.paired_comparison(runs, "A", n_resamples=FEW)
    paths = cmp.write_report(summary, comparison, str(tmp_path / "report"))
    assert sorted(os.listdir(tmp_path / "report")) == sorted(cmp.REPORT_FILES)   # no temporaries left

    with open(paths["report.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 + 1 * 3 and list(rows[0]) == list(cmp.CSV_HEADER)
    a_spleen = next(r for r in rows if r["table"] == "summary" and r["variant"] == "A" and r["class_id"] == "1")
    assert float(a_spleen["dice_mean"]) == pytest.approx(0.65) and a_spleen["class_name"] == "spleen"
    assert float(a_spleen["dice_std"]) == pytest.approx(0.1 / np.sqrt(2)) and a_spleen["n_runs"] == "2"
    b_spleen = next(r for r in rows if r["table"] == "comparison" and r["class_id"] == "1")
    assert (b_spleen["variant"], b_spleen["reference"], b_spleen["n_pairs"]) == ("B", "A", "6")
    assert float(b_spleen["mean_difference"]) == pytest.approx(0.035)
    assert float(b_spleen["p_value"]) == pytest.approx(0.03125)
    assert float(b_spleen["ci_low"]) <= 0.035 <= float(b_spleen["ci_high"])

    with open(paths["report.json"]) as f:
        report = json.load(f)
    assert report["reference"] == "A" and report["format"] == 1
    assert report["summary"]["variants"]["A"]["classes"]["6"]["mean"] == pytest.approx(0.825)
    assert report["comparison"]["comparisons"][0]["classes"]["6"]["p_value"] == pytest.approx(0.4375)
    assert report["comparison"]["comparisons"][0]["classes"]["mean"]["mean_difference"] == pytest.approx(0.31 / 12)
    assert report["summary"]["bootstrap"]["n_resamples"] == FEW

    with open(paths["report.png"], "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000

    text = open(paths["report.md"], encoding="utf-8").read()
    assert "SABS, fold(s) 0, setting 1, image 128 x 128 as stored, 1000 training steps" in text
    assert "support index(es) [2]" in text and "**seeds**: 1, 2" in text
    assert "abc123: 3 run(s)" in text and "def456 (uncommitted changes): 1 run(s)" in text
    assert "| A (reference) | 2 | 65.00 ± 7.07 |" in text
    assert "| B | spleen | +3.50 | [" in text and "| 0.0312 | 6 |" in text
    assert "| B | all classes | +2.58 |" in text


def test_write_report_marks_a_missing_p_value_and_refuses_mismatched_inputs(tmp_path):
    zero = {s: {c: [0.0, 0.0, 0.0] for c in (1, 6)} for s in (1, 2)}
    summary = cmp.variant_summary(records(zero), n_resamples=FEW)
    comparison = cmp.paired_comparison(records(zero), "A", n_resamples=FEW)
    cmp.write_report(summary, comparison, str(tmp_path))
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| n/a * | 6 |" in text and "B, spleen: no p-value: every paired difference is 0" in text
    rows = list(csv.DictReader(open(tmp_path / "report.csv", newline="")))
    assert rows[-1]["p_value"] == "" and "every paired difference is 0" in rows[-1]["note"]
    fewer = cmp.paired_comparison(records()[:3], "A", n_resamples=FEW)
    with pytest.raises(ValueError, match="different runs"):
        cmp.write_report(summary, fewer, str(tmp_path))
