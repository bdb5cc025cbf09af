"""Evaluation results as files and tables: reading `results.json`, the per-run table, and the
literature's fold table (Dice per organ, one row per fold, mean +- std over folds).

No torch here: tables can be built anywhere the JSON files are.

Every results.json carries a "protocol" record (see `fafnet.io.provenance`). Two folds are
joined into one table only when their protocols agree on every field of `PROTOCOL_FIELDS`;
otherwise the aggregation stops and names the field, so that numbers made differently are
never averaged silently. With the `groups` protocol of setting 2, each fold has one run per
class group and the table joins the groups' classes into one row. A run whose checkpoint was
trained on volumes of the fold it evaluates (test-set leakage) is never joined. A class that
could not be evaluated (skipped) has no score: every table marks it, and every mean over
classes or folds says which it covers.

Runs are joined or compared only on the same data: results.json's protocol records a data
identity (`protocol["data"]`, the sha256 of every label file of the dataset folder, written by
`fafnet.runtime.training_data.evaluation_data_record`); runs whose identities differ are
refused naming the first differing file, and a run without one (written before it was
recorded) is accepted with a warning (`data_identity_warnings`). A comparison
(`comparison_table`) needs the same fold, data and evaluation protocol (`COMPARED_FIELDS`: the
checkpoint and model may differ, that is what is compared); a learning curve (`curve_table`)
needs one training run's checkpoints evaluated with one protocol on one fold (only the step
differs). A results.json that is not a JSON object, lacks protocol fields or holds a
non-finite score is refused naming the file.
"""
import csv
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fafnet.io.provenance import TRAINING_FOLD_FIELDS

# Protocol fields that must agree between the runs of one fold table. The fold, the group
# (joined), the checkpoint's path and the code commit legitimately differ between runs.
PROTOCOL_FIELDS = ("model", "dataset", "setting", "setting2_protocol", "supp_idx", "n_part", "image_size",
                   "resample_in_plane", "n_volumes", "checkpoint_step", "training", "pretrained_weights",
                   "preprocessing")
# Protocol fields that must agree between the two runs of `comparison_table`: the fold, the
# data and how they were evaluated; the model, its checkpoint and its training are compared.
COMPARED_FIELDS = ("dataset", "eval_fold", "group", "setting", "setting2_protocol", "supp_idx", "n_part",
                   "image_size", "resample_in_plane", "n_volumes", "preprocessing")
# Fields every results.json's protocol holds (the tables name them); one without them is refused.
REQUIRED_PROTOCOL_FIELDS = ("dataset", "setting", "eval_fold", "supp_idx", "n_part")
# The data identity inside the protocol (fafnet.runtime.training_data.evaluation_data_record).
DATA_FIELD = "data"


def load_results(path: str) -> Dict:
    """Read an evaluation run's results.json (given the file or its run folder); a file that
    is not one (not a JSON object, a protocol without its fields, a non-finite score) is a
    ValueError naming it."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r}: no results.json (is it an evaluation run folder?)")
    with open(file, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except ValueError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(results, dict):
        raise ValueError(f"{file}: holds {json.dumps(results)[:40]}, not an evaluation's results (a JSON object)")
    for key in ("protocol", "classes", "mean_dice"):
        if key not in results:
            raise ValueError(f"{file}: missing key {key!r}; not a results.json written by this "
                             f"version of test.py (re-run the evaluation to record its protocol)")
    _check_protocol(results["protocol"], file)
    _check_scores(results, file)
    results["_path"] = file
    return results


def _check_protocol(protocol, file: str) -> None:
    if not isinstance(protocol, dict):
        raise ValueError(f"{file}: its protocol is {json.dumps(protocol)[:40]}, not a record (a JSON object)")
    missing = [name for name in REQUIRED_PROTOCOL_FIELDS if name not in protocol]
    if missing:
        raise ValueError(f"{file}: its protocol lacks {', '.join(map(repr, missing))}; not a results.json "
                         f"written by test.py (re-run the evaluation)")
    data = protocol.get(DATA_FIELD)
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("digest"), str)):
        raise ValueError(f"{file}: its protocol's {DATA_FIELD!r} is not a data identity (no digest)")


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and bool(np.isfinite(value)))


def _check_scores(results: Dict, file: str) -> None:
    """Every class entry is a record whose scores are finite numbers or None (not scored)."""
    if not isinstance(results["classes"], dict):
        raise ValueError(f"{file}: its classes are not a record (a JSON object)")
    for class_id, entry in results["classes"].items():
        if not isinstance(entry, dict) or "dice_mean" not in entry:
            raise ValueError(f"{file}: class {class_id} has no dice_mean")
        for key in ("dice_mean", "iou_mean"):
            if not _finite_or_none(entry.get(key)):
                raise ValueError(f"{file}: class {class_id} ({entry.get('name', '?')}) has {key} "
                                 f"{entry.get(key)!r}, not a finite number; its evaluation went wrong, so "
                                 f"its scores cannot be averaged (re-run it)")
    for key in ("mean_dice", "mean_iou"):
        if not _finite_or_none(results.get(key)):
            raise ValueError(f"{file}: {key} is {results.get(key)!r}, not a finite number; re-run the evaluation")


def csv_text(rows: Sequence[Sequence]) -> str:
    """Rows (header first) as CSV text."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def scored_classes(classes: Dict[str, Dict]) -> List[str]:
    """The class ids (as in results.json) whose Dice could be computed."""
    return [class_id for class_id, entry in classes.items() if entry.get("dice_mean") is not None]


def mean_coverage(classes: Dict[str, Dict]) -> str:
    """What a mean over classes covers: "classes" when every class has a score, else
    "1 of 2 classes (spleen)"."""
    scored = scored_classes(classes)
    if len(scored) == len(classes):
        return "classes"
    names = ", ".join(classes[c]["name"] for c in scored) or "none"
    return f"{len(scored)} of {len(classes)} classes ({names})"


def _mean_label(classes: Dict[str, Dict]) -> str:
    coverage = mean_coverage(classes)
    return "**mean**" if coverage == "classes" else f"**mean** of {coverage}"


def protocol_summary(protocol: Dict) -> str:
    """One line naming how a number was made (the header of the tables)."""
    setting = f"setting {protocol['setting']}"
    if protocol["setting"] == 2:
        setting += f" ({protocol['setting2_protocol']}"
        if protocol.get("group") is not None:
            setting += f", group {protocol['group']}"
        setting += ")"
    step = protocol.get("checkpoint_step")
    checkpoint = protocol.get("checkpoint") or "?"
    checkpoint += f" (step {step})" if step is not None else ""
    return (f"{protocol['dataset']} fold {protocol['eval_fold']}, {setting}, support index "
            f"{protocol['supp_idx']}, n_part {protocol['n_part']}, {grid_summary(protocol)}, "
            f"checkpoint {checkpoint}, pretrained {protocol.get('pretrained_weights') or 'none'}")


def grid_summary(protocol: Dict) -> str:
    """'image 256 x 256 as stored' or 'resampled in-plane to 128 x 128 (images linear, labels
    nearest; Dice on that grid)'."""
    resampled = protocol.get("resample_in_plane")
    if resampled:
        return (f"resampled in-plane to {resampled[0]} x {resampled[1]} (images linear, labels "
                "nearest; Dice on that grid)")
    size = protocol.get("image_size")
    return f"image {size[0]} x {size[1]} as stored" if size else "image size not recorded"


def results_table(results: Dict) -> str:
    """One evaluation run as a Markdown table: Dice and IoU (%) per class and their mean; a
    class with skipped work is marked with an asterisk and the skips are listed below."""
    skipped_classes = {str(s["class_id"]) for s in results.get("skipped", [])}
    lines = [protocol_summary(results["protocol"]), "",
             "| class | Dice (%) | IoU (%) | query volumes |", "|---|---|---|---|"]
    for class_id, entry in results["classes"].items():
        mark = " *" if class_id in skipped_classes else ""
        lines.append(f"| {entry['name']}{mark} | {percent(entry['dice_mean'])} | "
                     f"{percent(entry['iou_mean'])} | {entry['n_query_volumes']} |")
    lines.append(f"| {_mean_label(results['classes'])} | {percent(results['mean_dice'])} | "
                 f"{percent(results['mean_iou'])} | |")
    for skip in results.get("skipped", []):
        lines.append(f"\n\\* skipped: class {skip['class_id']} ({skip['class_name']}), "
                     f"{skip['what']}: {skip['reason']}")
    return "\n".join(lines) + "\n"


def comparison_table(results: Dict, baseline: Dict) -> str:
    """Markdown: Dice (%) per class of `results` against `baseline` (two evaluation runs of
    the same classes, fold, data and evaluation protocol, e.g. a trained and an untrained
    model) and the difference; runs that differ in any of `COMPARED_FIELDS` or in their data
    identity are refused naming the field."""
    if list(results["classes"]) != list(baseline["classes"]):
        raise ValueError(f"{results['_path']} and {baseline['_path']} evaluate different classes "
                         f"({list(results['classes'])} vs {list(baseline['classes'])})")
    check_same_fields([results, baseline], COMPARED_FIELDS, "compare")
    check_same_data([results, baseline])
    lines = ["| class | Dice (%) | baseline Dice (%) | difference (points) |", "|---|---|---|---|"]
    skipped = {str(s["class_id"]) for run in (results, baseline) for s in run.get("skipped", [])}
    rows = [(entry["name"] + (" *" if class_id in skipped else ""), entry["dice_mean"],
             baseline["classes"][class_id]["dice_mean"]) for class_id, entry in results["classes"].items()]
    mine, theirs = mean_coverage(results["classes"]), mean_coverage(baseline["classes"])
    label = "**mean**" if mine == theirs == "classes" else f"**mean** (of {mine}; baseline of {theirs})"
    rows.append((label, results["mean_dice"], baseline["mean_dice"]))
    for name, dice, before in rows:
        difference = "n/a" if dice is None or before is None else f"{100 * (dice - before):+.2f}"
        lines.append(f"| {name} | {percent(dice)} | {percent(before)} | {difference} |")
    return "\n".join(lines) + "\n"


def checkpoint_run(protocol: Dict) -> Optional[str]:
    """The training run a checkpoint belongs to: the run folder of a snapshot
    (<run>/snapshots/<file>), else the checkpoint file itself (a release file, 'untrained')."""
    checkpoint = protocol.get("checkpoint")
    if not checkpoint:
        return None
    path = os.path.normpath(checkpoint)
    folder = os.path.dirname(path)
    return os.path.dirname(folder) if os.path.basename(folder) == "snapshots" else path


def _same_run(mine: Optional[str], theirs: Optional[str]) -> bool:
    if mine == theirs:
        return True
    try:   # one folder named two ways (relative and absolute) on this machine
        return mine is not None and theirs is not None and os.path.samefile(mine, theirs)
    except OSError:
        return False


def check_one_training_run(runs: Sequence[Dict]) -> None:
    """Raise ValueError naming the first run whose checkpoint comes from another training run
    than the first run's, or whose step is given twice (`curve_table`)."""
    reference, steps = runs[0], {}
    for run in runs:
        mine, theirs = checkpoint_run(reference["protocol"]), checkpoint_run(run["protocol"])
        if not _same_run(mine, theirs):
            raise ValueError(f"cannot join {reference['_path']} and {run['_path']}: their checkpoints come from "
                             f"different training runs ('checkpoint': {mine!r} vs {theirs!r}); a curve is one "
                             f"training run's snapshots")
        step = run["protocol"].get("checkpoint_step")
        if step in steps:
            raise ValueError(f"step {step} appears twice: {steps[step]} and {run['_path']}; pass one "
                             f"evaluation per snapshot")
        steps[step] = run["_path"]


# Fields of a curve's runs that must agree, beyond the checkpoint's run: the fold table's
# protocol but the step, with the fold and the group.
CURVE_FIELDS = ("eval_fold", "group") + tuple(f for f in PROTOCOL_FIELDS if f != "checkpoint_step")


def curve_table(runs: Sequence[Dict]) -> str:
    """Markdown: Dice (%) per class and mean against the training step of each run's
    checkpoint (evaluations of one training run's snapshots), ordered by step; the runs must
    share the training run, the fold, the data and the protocol (only the step differs), and
    the header names them."""
    check_same_fields(runs, CURVE_FIELDS, "curve", whole_training=True)
    check_one_training_run(runs)
    check_same_data(runs)
    runs = sorted(runs, key=lambda r: r["protocol"].get("checkpoint_step") or 0)
    names = [entry["name"] for entry in runs[0]["classes"].values()]
    source = f"snapshots of training run {checkpoint_run(runs[0]['protocol'])}"
    lines = [protocol_summary(dict(runs[0]["protocol"], checkpoint=source, checkpoint_step=None)),
             "", "| step | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for run in runs:
        values = [percent(entry["dice_mean"]) for entry in run["classes"].values()]
        lines.append(f"| {run['protocol'].get('checkpoint_step')} | " + " | ".join(values)
                     + f" | {percent(run['mean_dice'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- fold table


# Training options that differ between the two trainings of the groups protocol by design.
GROUP_TRAINING_OPTIONS = ("group", "test_classes")


def _comparable(protocol: Dict, name: str, whole_training: bool = False):
    # results.json files written before the model registry hold FAF-Net's numbers.
    value = protocol.get(name, "fafnet" if name == "model" else None)
    if name == "training" and value is not None and not whole_training:
        value = {k: v for k, v in value.items() if k not in GROUP_TRAINING_OPTIONS + TRAINING_FOLD_FIELDS}
    return value


# What `check_same_fields` says the runs were to be, by its `what`.
_PURPOSES = {"join": ("join", "averaged"), "compare": ("compare", "compared"), "curve": ("join", "joined in one curve")}


def check_same_fields(runs: Sequence[Dict], fields: Sequence[str], what: str = "join",
                      whole_training: bool = False) -> None:
    """Raise ValueError naming the first of `fields` on which two runs' protocols differ
    (`what`: join, compare or curve, for the message; `whole_training`: the training
    record's fold fields count too)."""
    verb, ending = _PURPOSES[what]
    reference = runs[0]
    for other in runs[1:]:
        for name in fields:
            mine = _comparable(reference["protocol"], name, whole_training)
            theirs = _comparable(other["protocol"], name, whole_training)
            if mine != theirs:
                raise ValueError(
                    f"cannot {verb} {reference['_path']} and {other['_path']}: their protocols "
                    f"differ in {name!r} ({mine!r} vs {theirs!r}); numbers made differently "
                    f"must not be {ending}")


def check_same_protocol(runs: Sequence[Dict]) -> None:
    """Raise ValueError naming the first protocol field on which two runs differ."""
    check_same_fields(runs, PROTOCOL_FIELDS)


def _data_files(record: Dict) -> Dict[str, str]:
    return {e.get("name"): e.get("sha256") for e in record.get("labels") or [] if isinstance(e, dict)}


def _first_data_difference(mine: Dict, theirs: Dict) -> str:
    """The first label file whose hash differs, or that only one record holds."""
    a, b = _data_files(mine), _data_files(theirs)
    for name in sorted(a.keys() | b.keys()):
        if a.get(name) != b.get(name):
            shown = [f"{h[:12]}..." if h else "absent" for h in (a.get(name), b.get(name))]
            return f"{name}: sha256 {shown[0]} vs {shown[1]}"
    return f"digest {str(mine.get('digest'))[:12]}... vs {str(theirs.get('digest'))[:12]}..."


def check_same_data(runs: Sequence[Dict]) -> None:
    """Raise ValueError naming the two runs and the first differing label file when two runs'
    data identities (protocol["data"]) differ; runs without one are not compared (see
    `data_identity_warnings`)."""
    recorded = [run for run in runs if run["protocol"].get(DATA_FIELD)]
    for other in recorded[1:]:
        mine, theirs = recorded[0]["protocol"][DATA_FIELD], other["protocol"][DATA_FIELD]
        if mine.get("digest") != theirs.get("digest"):
            raise ValueError(f"cannot join {recorded[0]['_path']} and {other['_path']}: they were evaluated on "
                             f"different data ('data': {_first_data_difference(mine, theirs)}); numbers on "
                             f"other data must not be joined")


def data_identity_warnings(runs: Sequence[Dict]) -> List[str]:
    """One line per run that records no data identity (older results.json), whose data
    could therefore not be checked against the other runs'."""
    if len(runs) < 2:
        return []
    return [f"{run['_path']}: records no data identity (written before it was recorded), so its "
            f"data could not be checked against the other runs'" for run in runs
            if not run["protocol"].get(DATA_FIELD)]


def _runs_by_fold(runs: Sequence[Dict]) -> Dict[int, List[Dict]]:
    """Runs grouped by fold; with the `groups` protocol a fold needs one run per group."""
    by_fold: Dict[int, Dict] = {}
    for results in runs:
        protocol = results["protocol"]
        key = (protocol["eval_fold"], protocol.get("group"))
        fold_runs = by_fold.setdefault(protocol["eval_fold"], {})
        if key[1] in fold_runs:
            what = f"fold {key[0]}" + (f" group {key[1]}" if key[1] is not None else "")
            raise ValueError(f"{what} appears twice: {fold_runs[key[1]]['_path']} and "
                             f"{results['_path']}; pass one evaluation run per fold")
        fold_runs[key[1]] = results
    groups = {frozenset(fold_runs) for fold_runs in by_fold.values()}
    if len(groups) > 1:
        raise ValueError(f"the folds hold different class groups ({sorted(map(sorted, groups))}); "
                         f"each fold needs the same groups")
    return {fold: [fold_runs[g] for g in sorted(fold_runs, key=lambda g: (g is not None, g))]
            for fold, fold_runs in by_fold.items()}


def _joined_classes(fold_runs: Sequence[Dict]) -> Dict[str, Dict]:
    """The classes of a fold's runs (one run, or one per group) in one dict."""
    joined: Dict[str, Dict] = {}
    for results in fold_runs:
        for class_id, entry in results["classes"].items():
            if class_id in joined:
                raise ValueError(f"{results['_path']}: class {class_id} is also evaluated by "
                                 f"another group of the same fold")
            joined[class_id] = entry
    return joined


def leaked_volumes(results: Dict) -> List[int]:
    """The evaluated fold's volumes that the run's checkpoint was trained on (its leakage
    record, or its training record against its fold's volumes); empty when none or unknown."""
    protocol = results["protocol"]
    leakage = protocol.get("leakage") or {}
    overlap = set(leakage.get("overlap") or [])
    training = protocol.get("training") or {}
    # Volume indices name the same volumes only within one dataset.
    if training.get("volume_indices") and results.get("fold_volumes") and training.get("dataset") == protocol["dataset"]:
        overlap |= set(training["volume_indices"]) & set(results["fold_volumes"])
    return sorted(overlap)


def check_no_leakage(runs: Sequence[Dict]) -> None:
    """Raise ValueError naming the first run whose checkpoint trained on its test volumes."""
    for results in runs:
        leaked = leaked_volumes(results)
        if leaked:
            allowed = (results["protocol"].get("leakage") or {}).get("allow_leakage")
            raise ValueError(f"{results['_path']}: its checkpoint was trained on volume(s) {leaked} of "
                             f"evaluated fold {results['protocol']['eval_fold']}"
                             + (" (evaluated with allow_leakage=True)" if allowed else "")
                             + "; a fold table of test scores must not include it")


def leakage_warnings(paths: Sequence[str]) -> List[str]:
    """One line per run whose leakage could not be checked (older snapshots, release
    checkpoints), for the fold table's user to see."""
    lines = []
    for path in paths:
        results = load_results(path)
        leakage = results["protocol"].get("leakage")
        if leakage is None or leakage.get("status") == "unchecked":
            reason = leakage["reason"] if leakage else "results.json predates the leakage record"
            lines.append(f"{results['_path']}: test-set leakage was not checked ({reason})")
    return lines


def aggregate_folds(paths: Sequence[str], metric: str = "dice") -> Tuple[List[str], List[List]]:
    """Collect evaluation runs (one per fold, or one per fold and group) into the literature's
    table.

    Returns (header, rows): header = ["fold", <class names...>, "Mean"]; one row per fold
    (sorted by fold) with the metric in percent, then a "mean" and a "std" row over folds
    (std is the sample standard deviation, ddof=1; 0 with a single fold). A fold's "Mean" is
    its mean over classes, as the literature reports it. A class a fold could not evaluate
    (skipped) is None there: the fold's Mean covers its other classes and the class's mean
    and std its other folds (`fold_table_notes` says so). Raises ValueError when the runs'
    protocols differ (naming the field), their data identities differ (naming the file), a
    run's checkpoint was trained on its test volumes, a fold appears twice, or the folds'
    classes differ.
    """
    if metric not in ("dice", "iou"):
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    if not paths:
        raise ValueError("aggregate needs at least one evaluation run")
    runs = [load_results(path) for path in paths]
    check_same_protocol(runs)
    check_same_data(runs)
    check_no_leakage(runs)
    by_fold = {fold: _joined_classes(fold_runs) for fold, fold_runs in _runs_by_fold(runs).items()}
    class_ids = sorted(next(iter(by_fold.values())), key=int)
    for fold, classes in by_fold.items():
        if sorted(classes, key=int) != class_ids:
            raise ValueError(f"fold {fold} evaluates classes {sorted(classes, key=int)}, the "
                             f"other folds {class_ids}")
    first = by_fold[min(by_fold)]
    header = ["fold"] + [first[c]["name"] for c in class_ids] + ["Mean"]
    table = []
    for fold in sorted(by_fold):
        values = [_percent_or_none(by_fold[fold][c][f"{metric}_mean"]) for c in class_ids]
        table.append([fold] + values + [_mean_or_none(values)])
    columns = list(zip(*[row[1:] for row in table]))
    rows = table + [["mean"] + [_mean_or_none(c) for c in columns]] + [["std"] + [_std_or_none(c) for c in columns]]
    return header, rows


def _percent_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _std_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.std(present, ddof=1)) if len(present) > 1 else 0.0


def fold_table_notes(header: List[str], rows: List[List]) -> List[str]:
    """What the means of a table with missing (skipped) values cover, one line per fold row
    or class column concerned; empty for a complete table."""
    per_fold = [r for r in rows if r[0] not in ("mean", "std")]
    names = header[1:-1]
    notes = []
    for row in per_fold:
        missing = [n for n, v in zip(names, row[1:-1]) if v is None]
        if missing:
            covered = [n for n, v in zip(names, row[1:-1]) if v is not None]
            notes.append(f"fold {row[0]}: {', '.join(missing)} skipped; its Mean covers "
                         f"{', '.join(covered) or 'no class'}")
    for position, name in enumerate(names, start=1):
        present = sum(row[position] is not None for row in per_fold)
        if present < len(per_fold):
            notes.append(f"{name}: mean ± std over {present} of {len(per_fold)} folds")
    return notes


def _cell(value: Optional[float]) -> str:
    return "n/a *" if value is None else f"{value:.2f}"


def fold_table_header(paths: Sequence[str]) -> str:
    """The protocol line of a fold table (from the first run; the others agree with it)."""
    protocols = [load_results(path)["protocol"] for path in paths]
    protocol = dict(protocols[0], group=None, checkpoint="one per fold")
    protocol["eval_fold"] = "/".join(str(f) for f in sorted({p["eval_fold"] for p in protocols}))
    return protocol_summary(protocol)


def fold_table_markdown(header: List[str], rows: List[List], title: str = "") -> str:
    """Markdown table: one row per fold, then a 'mean +- std' row (values in percent); a
    skipped value shows as "n/a *", a mean that covers fewer classes or folds carries an
    asterisk, and the notes below say what each such mean covers."""
    per_fold = [r for r in rows if r[0] not in ("mean", "std")]
    mean = next(r for r in rows if r[0] == "mean")
    std = next(r for r in rows if r[0] == "std")
    lines = ([title, ""] if title else []) + [
        "| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in per_fold:
        partial = any(v is None for v in row[1:-1])
        cells = [_cell(v) for v in row[1:-1]] + [_cell(row[-1]) + (" *" if partial and row[-1] is not None else "")]
        lines.append("| " + " | ".join([str(row[0])] + cells) + " |")
    incomplete = [any(r[k] is None for r in per_fold) for k in range(1, len(header) - 1)]
    incomplete.append(any(v is None for r in per_fold for v in r[1:-1]))   # the Mean column
    lines.append("| mean ± std | " + " | ".join(
        "n/a *" if m is None else f"{m:.2f} ± {s:.2f}" + (" *" if partial else "")
        for m, s, partial in zip(mean[1:], std[1:], incomplete)) + " |")
    notes = fold_table_notes(header, rows)
    if notes:
        lines += [""] + [f"\\* {note}" for note in notes]
    return "\n".join(lines) + "\n"


def fold_table_csv(header: List[str], rows: List[List]) -> str:
    """CSV of the table (values in percent, 4 decimals); a skipped value is empty, and a
    table with skipped values gets a last column "note" saying what each mean covers."""
    def value(v: Optional[float]) -> str:
        return "" if v is None else f"{v:.4f}"

    table = [header] + [[r[0]] + [value(v) for v in r[1:]] for r in rows]
    notes = fold_table_notes(header, rows)
    if notes:
        table[0] = header + ["note"]
        for line in table[1:]:
            line.append("; ".join(n for n in notes if n.startswith(f"fold {line[0]}:"))
                        if line[0] not in ("mean", "std")
                        else "; ".join(n for n in notes if not n.startswith("fold ")))
    return csv_text(table)
