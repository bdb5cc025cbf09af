"""Comparing methods (docs/protocol.md section 17): variants x seeds x folds evaluated with one
protocol, summarised per variant and compared, pair by pair, against a reference variant.

Input: run records, one per evaluation run of one trained model,

    {"variant": "fafnet", "seed": 1, "fold": 0, "path": "runs/a/results.json",
     "results": <that results.json as a dict>}

- `check_same_protocol(records)` refuses runs whose protocol records differ in anything but
  the fields of `FREE_FIELDS` (the variant's model and options, the seed, the fold, the
  checkpoint's path, the code version, the leakage record's file-specific fields), naming the
  field and two runs; also a (variant, seed, fold) given twice, a run without a score for a
  class another run scores, runs of one variant with different models, a record whose seed or
  fold disagrees with its protocol, and a checkpoint trained on its test volumes.
- `variant_summary(records)`: per variant and class (and for the mean over classes) the
  run-level Dice (the results' class `dice_mean`), their mean and standard deviation over runs
  (ddof=1) and a percentile bootstrap interval of the mean: query volumes are resampled with
  replacement within each run, a drawn volume bringing its scores for every support index and
  class along.
- `paired_comparison(records, reference)`: per other variant, the Dice differences to the
  reference paired by (seed, fold, support index, class, query volume); their mean with a
  bootstrap interval (query volumes resampled within each (seed, fold)) and the two-sided
  Wilcoxon signed-rank p-value over the same pairs.
- `write_report(summary, comparison, out_dir)`: report.md, report.csv, report.json and
  report.png, each written atomically.

Dice is a fraction in [0, 1] in every returned dict, report.json and report.csv; report.md and
report.png show percent (differences in percentage points). No torch here.
"""
import io
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from fafnet.evaluation.results import csv_text, grid_summary, leaked_volumes
from fafnet.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from fafnet.io.provenance import TRAINING_FOLD_FIELDS

N_RESAMPLES = 10000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
MEAN = "mean"            # the key of the mean over classes, beside the class ids ("1", "6", ...)
REPORT_FILES = ("report.md", "report.csv", "report.json", "report.png")
REPORT_FORMAT = 1
_TOLERANCE = 1e-6        # a results' class dice_mean against its per-volume Dice

# Protocol fields (paths inside results["protocol"]) that may differ between the runs of one
# comparison; every other field must be equal. A path covers everything below it.
VARIANT_FIELDS = ("model", "model_options", "training.model", "training.model_options")  # the variant
FREE_FIELDS = VARIANT_FIELDS + (
    "training.seed",                    # the seed (the record's "seed")
    "checkpoint",                       # the checkpoint file's path
    "code",                             # the code version: its distinct commits are reported instead
    "eval_fold",                        # the fold is a design factor (the record's "fold")
) + tuple(f"training.{name}" for name in TRAINING_FOLD_FIELDS) + (   # the fold a checkpoint trained for
    # The leakage record's fields that name the checkpoint's and the fold's volumes; its status
    # and allow_leakage must agree (and a run trained on its test volumes is refused anyway).
    "leakage.training_fold", "leakage.training_volumes", "leakage.evaluated_fold",
    "leakage.evaluated_volumes", "leakage.overlap", "leakage.reason",
)
_MISSING = object()


# ----------------------------------------------------------------------------- checks


def _covered(path: str, fields: Sequence[str]) -> bool:
    """Whether a dotted path is one of `fields` or lies below one."""
    return any(path == field or path.startswith(field + ".") for field in fields)


def _is_free(path: str) -> bool:
    return _covered(path, FREE_FIELDS)


def _shown(value) -> str:
    if value is _MISSING:
        return "(missing)"
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _differences(mine, theirs, prefix: str = "") -> Iterable[Tuple[str, object, object]]:
    """(dotted path, value, value) where two protocol records differ, walking into the fields
    that are dicts on both sides (a dict against anything else differs as a whole), in the
    order of `mine`'s fields, then those only `theirs` has."""
    for key in list(mine) + [k for k in theirs if k not in mine]:
        path = f"{prefix}.{key}" if prefix else str(key)
        a, b = mine.get(key, _MISSING), theirs.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, path)
        elif a is _MISSING or b is _MISSING or a != b:
            yield path, a, b


def _first_difference(mine: Dict, theirs: Dict, keep) -> Optional[Tuple[str, object, object]]:
    """The first difference (see `_differences`) whose path `keep` accepts; None if none."""
    return next((d for d in _differences(mine, theirs) if keep(d[0])), None)


def _validate_record(record: Dict, position: int) -> None:
    for key in ("variant", "seed", "fold", "path", "results"):
        if key not in record:
            raise ValueError(f"run record {position} ({record.get('path', '?')}) has no {key!r}; a record is "
                             f"{{'variant', 'seed', 'fold', 'path', 'results'}}")
    for key in ("protocol", "classes", "supports"):
        if key not in record["results"]:
            raise ValueError(f"{record['path']}: its results have no {key!r} (not a results.json of this "
                             f"version's evaluation)")


def _scored(record: Dict) -> Dict[str, str]:
    """class id -> name of the classes the run has a score for."""
    return {class_id: entry.get("name", f"class {class_id}")
            for class_id, entry in record["results"]["classes"].items() if entry.get("dice_mean") is not None}


def check_same_protocol(records: Sequence[Dict]) -> None:
    """Raise ValueError unless the runs form one comparison (see the module docstring): their
    protocol records agree on every field but `FREE_FIELDS`, each (variant, seed, fold) is
    given once, every run scores every class any run scores, the runs of a variant share one
    model and its options, a record's seed and fold are those of its protocol (where the
    protocol records them), and no checkpoint was trained on volumes it is tested on."""
    if not records:
        raise ValueError("a comparison needs at least one run")
    for position, record in enumerate(records):
        _validate_record(record, position)
    seen: Dict[Tuple, str] = {}
    for record in records:
        key = (record["variant"], record["seed"], record["fold"])
        if key in seen:
            raise ValueError(f"variant {key[0]!r}, seed {key[1]}, fold {key[2]} is given twice: {seen[key]} "
                             f"and {record['path']}; pass one evaluation run per (variant, seed, fold)")
        seen[key] = record["path"]
    for record in records:
        protocol = record["results"]["protocol"]
        if protocol.get("eval_fold") is not None and protocol["eval_fold"] != record["fold"]:
            raise ValueError(f"{record['path']} is given as fold {record['fold']} but its protocol says "
                             f"eval_fold {protocol['eval_fold']}")
        training = protocol.get("training") or {}
        if training.get("seed") is not None and training["seed"] != record["seed"]:
            raise ValueError(f"{record['path']} is given as seed {record['seed']} but its checkpoint was "
                             f"trained with seed {training['seed']} (protocol.training.seed)")
    first = records[0]
    for other in records[1:]:
        difference = _first_difference(first["results"]["protocol"], other["results"]["protocol"],
                                       lambda path: not _is_free(path))
        if difference:
            path, mine, theirs = difference
            raise ValueError(f"runs differ in protocol.{path}: {_shown(mine)} ({first['path']}) vs "
                             f"{_shown(theirs)} ({other['path']}); a comparison needs one protocol")
    by_variant: Dict[str, Dict] = {}
    for record in records:
        reference = by_variant.setdefault(record["variant"], record)
        difference = _first_difference(reference["results"]["protocol"], record["results"]["protocol"],
                                       lambda path: _covered(path, VARIANT_FIELDS))
        if difference:
            path, mine, theirs = difference
            raise ValueError(f"runs of variant {record['variant']!r} differ in protocol.{path}: {_shown(mine)} "
                             f"({reference['path']}) vs {_shown(theirs)} ({record['path']}); a variant is "
                             f"one model with one set of options")
    scored = [_scored(record) for record in records]
    if not any(scored):
        raise ValueError(f"no run has a score for any class ({records[0]['path']} and the others); nothing "
                         f"to compare")
    for record, mine in zip(records, scored):
        for other, theirs in zip(records, scored):
            missing = [c for c in theirs if c not in mine]
            if missing:
                class_id = missing[0]
                skips = [s for s in record["results"].get("skipped", []) if str(s.get("class_id")) == class_id]
                why = f" (skipped: {skips[0]['what']}: {skips[0]['reason']})" if skips else ""
                raise ValueError(f"{record['path']} has no score for class {class_id} ({theirs[class_id]}){why}, "
                                 f"which {other['path']} has; a comparison needs every class scored by every run")
    for record in records:
        leaked = leaked_volumes(record["results"])
        if leaked:
            raise ValueError(f"{record['path']}: its checkpoint was trained on volume(s) {leaked} of evaluated "
                             f"fold {record['fold']}; a comparison of test scores must not include it")


# ----------------------------------------------------------------------------- run data


def _class_ids(records: Sequence[Dict]) -> List[str]:
    """The class ids every run scores (equal for all runs after the check), in results order."""
    return list(_scored(records[0]))


def _class_names(records: Sequence[Dict], class_ids: Sequence[str]) -> Dict[str, str]:
    names = _scored(records[0])
    return {c: names[c] for c in class_ids}


def _variants(records: Sequence[Dict]) -> List[str]:
    """The variants in the order of their first run."""
    return list(dict.fromkeys(r["variant"] for r in records))


def _per_volume(record: Dict, class_ids: Sequence[str]) -> Dict[Tuple[str, str, int], float]:
    """(support index, class id, query volume) -> Dice of one run."""
    scores = {}
    for supp_idx, support in record["results"]["supports"].items():
        for class_id in class_ids:
            entry = support["classes"].get(class_id)
            for row in (entry or {}).get("per_volume", []):
                if row.get("dice") is not None:
                    key = (str(supp_idx), class_id, int(row["volume"]))
                    if key in scores:
                        raise ValueError(f"{record['path']}: support index {supp_idx}, class {class_id} lists "
                                         f"query volume {row['volume']} twice")
                    scores[key] = float(row["dice"])
    return scores


def _run_dice(record: Dict, class_ids: Sequence[str], scores: Dict) -> Dict[str, float]:
    """class id -> the run's class Dice (the results' dice_mean), checked against its per-volume
    Dice (mean over query volumes, averaged over support indices), and "mean" over classes."""
    dice = {}
    for class_id in class_ids:
        stated = float(record["results"]["classes"][class_id]["dice_mean"])
        per_support = {}
        for (supp_idx, c, _), value in scores.items():
            if c == class_id:
                per_support.setdefault(supp_idx, []).append(value)
        if not per_support:
            raise ValueError(f"{record['path']}: class {class_id} has a dice_mean but no per-volume Dice "
                             f"under supports; the bootstrap and the pairs need them")
        rebuilt = float(np.mean([np.mean(v) for v in per_support.values()]))
        if abs(rebuilt - stated) > _TOLERANCE:
            raise ValueError(f"{record['path']}: class {class_id}'s dice_mean {stated:.6f} is not the mean of "
                             f"its per-volume Dice ({rebuilt:.6f})")
        dice[class_id] = stated
    dice[MEAN] = float(np.mean([dice[c] for c in class_ids]))
    return dice


def _resampled_counts(rng: np.random.Generator, n_items: int, n_resamples: int) -> np.ndarray:
    """[n_resamples, n_items]: how often each item is drawn in each resample of n_items draws
    with replacement."""
    draws = rng.integers(0, n_items, size=(n_resamples, n_items))
    offsets = draws + n_items * np.arange(n_resamples)[:, None]
    return np.bincount(offsets.ravel(), minlength=n_resamples * n_items).reshape(n_resamples, n_items)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _interval(values: np.ndarray, confidence: float) -> Tuple[Optional[List[float]], int]:
    """The percentile interval of the finite bootstrap values and how many were undefined
    (a resample that drew no volume with the class)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, int(values.size)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)], int(values.size - finite.size)


def _run_bootstrap(scores: Dict, class_ids: Sequence[str], rng: np.random.Generator,
                   n_resamples: int) -> np.ndarray:
    """[n_resamples, n_classes + 1]: the run's class Dice (and their mean, last) with its query
    volumes resampled; a drawn volume brings its Dice for every support index and class."""
    volumes = sorted({v for (_, _, v) in scores})
    supports = sorted({s for (s, _, _) in scores}, key=lambda s: int(s) if s.lstrip("-").isdigit() else s)
    position = {v: i for i, v in enumerate(volumes)}
    values = np.zeros((len(volumes), len(supports), len(class_ids)))
    present = np.zeros_like(values)
    for (supp_idx, class_id, volume), dice in scores.items():
        index = (position[volume], supports.index(supp_idx), list(class_ids).index(class_id))
        values[index], present[index] = dice, 1.0
    counts = _resampled_counts(rng, len(volumes), n_resamples).astype(float)
    flat = (len(volumes), len(supports) * len(class_ids))
    per_support = _ratio(counts @ values.reshape(flat), counts @ present.reshape(flat))
    per_support = per_support.reshape(n_resamples, len(supports), len(class_ids))
    # The class Dice averages the support indices that scored the class in the run itself.
    scored_supports = present.any(axis=0)                                    # [supports, classes]
    with np.errstate(invalid="ignore"):
        per_class = np.nansum(np.where(scored_supports, per_support, 0.0), axis=1) / scored_supports.sum(axis=0)
    undefined = np.any(np.isnan(per_support) & scored_supports, axis=1)     # a support lost every volume
    per_class[undefined] = np.nan
    return np.concatenate([per_class, per_class.mean(axis=1, keepdims=True)], axis=1)


def _bootstrap_record(n_resamples: int, seed: int, confidence: float, resampling: str) -> Dict:
    return {"n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence),
            "method": "percentile", "resampling": resampling}


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _runs_list(records: Sequence[Dict]) -> List[Dict]:
    return [{"variant": r["variant"], "seed": r["seed"], "fold": r["fold"], "path": r["path"]} for r in records]


def _sort_key(value) -> Tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


# ----------------------------------------------------------------------------- protocol


def protocol_overview(records: Sequence[Dict]) -> Dict:
    """What the runs share and what varies, for the report's header: "common" (the protocol
    record without its free fields; the first run's), "variants" (each one's model and
    options), "seeds", "folds", and "code" (each distinct commit with its runs' paths)."""
    first = records[0]["results"]["protocol"]
    common = _without_free(first)
    variants = {}
    for record in records:
        protocol = record["results"]["protocol"]
        variants.setdefault(record["variant"], {"model": protocol.get("model"),
                                                "model_options": protocol.get("model_options")})
    code: Dict[Tuple, Dict] = {}
    for record in records:
        version = record["results"]["protocol"].get("code") or {}
        key = (version.get("commit"), version.get("dirty"))
        code.setdefault(key, {"commit": key[0], "dirty": key[1], "runs": []})["runs"].append(record["path"])
    return {"common": common, "variants": variants,
            "seeds": sorted({r["seed"] for r in records}, key=_sort_key),
            "folds": sorted({r["fold"] for r in records}, key=_sort_key),
            "code": list(code.values())}


def _without_free(record, prefix: str = ""):
    if not isinstance(record, dict):
        return record
    kept = {}
    for key, value in record.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if not _is_free(path):
            kept[key] = _without_free(value, path)
    return kept


# ----------------------------------------------------------------------------- summary


def variant_summary(records: Sequence[Dict], n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    confidence: float = CONFIDENCE) -> Dict:
    """Per variant and class (and "mean" over classes): the runs' Dice, their mean, standard
    deviation (ddof=1; None with one run) and count, and the percentile bootstrap interval of
    the mean (query volumes resampled with replacement within each run, `n_resamples` times,
    generator seeded with `seed`; every variant starts from the same seed, so variants with
    the same runs draw the same volumes). Dice in [0, 1]. Schema: see `write_report`."""
    check_same_protocol(records)
    _check_bootstrap(n_resamples, confidence)
    class_ids = _class_ids(records)
    names = _class_names(records, class_ids)
    keys = class_ids + [MEAN]
    variants = {}
    for variant in _variants(records):
        runs = sorted((r for r in records if r["variant"] == variant), key=lambda r: (_sort_key(r["seed"]),
                                                                                       _sort_key(r["fold"])))
        rng = np.random.default_rng(seed)
        run_entries, boot = [], np.zeros((n_resamples, len(keys)))
        for record in runs:
            scores = _per_volume(record, class_ids)
            dice = _run_dice(record, class_ids, scores)
            code = record["results"]["protocol"].get("code") or {}
            run_entries.append({"seed": record["seed"], "fold": record["fold"], "path": record["path"],
                                "commit": code.get("commit"), "dice": dice})
            boot += _run_bootstrap(scores, class_ids, rng, n_resamples)
        boot /= len(runs)
        entry = {}
        for k, key in enumerate(keys):
            values = np.array([run["dice"][key] for run in run_entries])
            interval, undefined = _interval(boot[:, k], confidence)
            entry[key] = {"name": names.get(key, "mean over classes"), "n_runs": len(values),
                          "mean": float(values.mean()),
                          "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                          "ci": interval, "n_resamples_undefined": undefined}
        variants[variant] = {"runs": run_entries, "classes": entry}
    return {"format": REPORT_FORMAT, "kind": "variant summary",
            "protocol": protocol_overview(records),
            "classes": [{"id": c, "name": names[c]} for c in class_ids],
            "bootstrap": _bootstrap_record(n_resamples, seed, confidence,
                                           "query volumes with replacement within each run (seed, fold); a "
                                           "drawn volume brings its Dice for every support index and class"),
            "runs": _runs_list(records), "variants": variants}


# ----------------------------------------------------------------------------- comparison


def wilcoxon_test(differences: Sequence[float]) -> Dict:
    """The two-sided Wilcoxon signed-rank test of paired differences (scipy.stats.wilcoxon,
    zero differences dropped): {"p_value", "statistic", "n_nonzero", "reason"}; p_value None
    with the reason when every difference is 0 or fewer than 2 are non-zero."""
    d = np.asarray(differences, dtype=float)
    nonzero = d[d != 0]
    if d.size == 0:
        return {"p_value": None, "statistic": None, "n_nonzero": 0, "reason": "no pairs"}
    if nonzero.size == 0:
        return {"p_value": None, "statistic": None, "n_nonzero": 0,
                "reason": f"every paired difference is 0 ({d.size} pair(s)); the test is undefined"}
    if nonzero.size < 2:
        return {"p_value": None, "statistic": None, "n_nonzero": int(nonzero.size),
                "reason": f"fewer than 2 non-zero paired differences ({nonzero.size} of {d.size}); "
                          f"the test is undefined"}
    # Only the non-zero differences, which is what zero_method="wilcox" keeps. method="auto" then
    # takes the exact null distribution for up to 50 distinct magnitudes; with tied magnitudes
    # an exhaustive permutation for up to 13, else the normal approximation (scipy >= 1.13).
    result = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="auto")
    return {"p_value": float(result.pvalue), "statistic": float(result.statistic),
            "n_nonzero": int(nonzero.size), "reason": None}


def _pairs(records: Sequence[Dict], variant: str, reference: str,
           class_ids: Sequence[str]) -> Tuple[Dict[Tuple, float], Dict[str, int]]:
    """(seed, fold, support index, class id, query volume) -> Dice of `variant` minus that of
    `reference`, for the keys both have; and how many scores of each found no partner."""
    scores = {}
    for name in (variant, reference):
        scores[name] = {}
        for record in records:
            if record["variant"] == name:
                for key, value in _per_volume(record, class_ids).items():
                    scores[name][(record["seed"], record["fold"]) + key] = value
    mine, theirs = scores[variant], scores[reference]
    pairs = {key: mine[key] - theirs[key] for key in mine if key in theirs}
    unpaired = {"variant": sum(k not in theirs for k in mine), "reference": sum(k not in mine for k in theirs)}
    return pairs, unpaired


def _pair_bootstrap(pairs: Dict[Tuple, float], class_ids: Sequence[str], rng: np.random.Generator,
                    n_resamples: int) -> np.ndarray:
    """[n_resamples, n_classes + 1]: the mean paired difference per class (and over all pairs,
    last) with query volumes resampled within each (seed, fold); a drawn volume brings all its
    (support index, class) pairs."""
    groups: Dict[Tuple, Dict[int, np.ndarray]] = {}
    n_classes = len(class_ids)
    column = {c: i for i, c in enumerate(class_ids)}
    for (seed, fold, _, class_id, volume), difference in pairs.items():
        sums = groups.setdefault((seed, fold), {}).setdefault(volume, np.zeros((2, n_classes)))
        sums[0, column[class_id]] += difference
        sums[1, column[class_id]] += 1
    numerator = np.zeros((n_resamples, n_classes))
    denominator = np.zeros((n_resamples, n_classes))
    for group in sorted(groups, key=lambda g: (_sort_key(g[0]), _sort_key(g[1]))):
        volumes = groups[group]
        table = np.stack([volumes[v] for v in sorted(volumes)])             # [volumes, 2, classes]
        counts = _resampled_counts(rng, len(volumes), n_resamples).astype(float)
        numerator += counts @ table[:, 0, :]
        denominator += counts @ table[:, 1, :]
    per_class = _ratio(numerator, denominator)
    overall = _ratio(numerator.sum(axis=1), denominator.sum(axis=1))
    return np.concatenate([per_class, overall[:, None]], axis=1)


def paired_comparison(records: Sequence[Dict], reference: str, n_resamples: int = N_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Dict:
    """Every other variant against `reference`: the Dice differences (variant minus reference)
    paired by (seed, fold, support index, class, query volume), only pairs present in both;
    per class and over all classes ("mean": all pairs pooled) the mean difference, its
    percentile bootstrap interval (query volumes resampled within each (seed, fold),
    `n_resamples` times, generator seeded with `seed` for each variant), the two-sided
    Wilcoxon signed-rank p-value over the same pairs (`wilcoxon_test`) and the pair count.
    Differences in Dice units ([-1, 1]). Raises ValueError for an unknown reference or a
    variant without a single pair. Schema: see `write_report`."""
    check_same_protocol(records)
    _check_bootstrap(n_resamples, confidence)
    variants = _variants(records)
    if reference not in variants:
        raise ValueError(f"reference variant {reference!r} is not among the runs' variants {variants}")
    class_ids = _class_ids(records)
    names = _class_names(records, class_ids)
    comparisons = []
    for variant in variants:
        if variant == reference:
            continue
        pairs, unpaired = _pairs(records, variant, reference, class_ids)
        if not pairs:
            grid = {v: sorted({(r["seed"], r["fold"]) for r in records if r["variant"] == v}) for v in
                    (variant, reference)}
            raise ValueError(f"variant {variant!r} shares no (seed, fold, support index, class, query volume) with "
                             f"reference {reference!r}: (seed, fold) {grid[variant]} vs {grid[reference]}")
        boot = _pair_bootstrap(pairs, class_ids, np.random.default_rng(seed), n_resamples)
        entry = {}
        for k, key in enumerate(class_ids + [MEAN]):
            differences = [d for pair, d in pairs.items() if key == MEAN or pair[3] == key]
            interval, undefined = _interval(boot[:, k], confidence)
            test = wilcoxon_test(differences)
            entry[key] = {"name": names.get(key, "all classes"), "n_pairs": len(differences),
                          "mean_difference": float(np.mean(differences)) if differences else None,
                          "ci": interval if differences else None, "n_resamples_undefined": undefined,
                          "p_value": test["p_value"], "statistic": test["statistic"],
                          "n_nonzero": test["n_nonzero"], "p_value_reason": test["reason"]}
        comparisons.append({"variant": variant, "reference": reference, "unpaired": unpaired, "classes": entry})
    return {"format": REPORT_FORMAT, "kind": "paired comparison", "reference": reference,
            "classes": [{"id": c, "name": names[c]} for c in class_ids],
            "pairing": "(seed, fold, support index, class, query volume); difference = variant - reference",
            "bootstrap": _bootstrap_record(n_resamples, seed, confidence,
                                           "query volumes with replacement within each (seed, fold); a drawn "
                                           "volume brings all its (support index, class) pairs"),
            "test": "Wilcoxon signed-rank, two-sided (scipy.stats.wilcoxon, zero differences dropped, "
                    f"method 'auto'; scipy {_scipy_version()})",
            "runs": _runs_list(records), "comparisons": comparisons}


def _scipy_version() -> str:
    import scipy
    return scipy.__version__


# ----------------------------------------------------------------------------- writers


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _pct_interval(interval: Optional[Sequence[float]], signed: bool = False) -> str:
    if not interval:
        return "n/a"
    return f"[{_pct(interval[0], signed)}, {_pct(interval[1], signed)}]"


def _p_text(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _join(values: Iterable) -> str:
    return ", ".join(str(v) for v in values)


def _ordered_variants(summary: Dict, comparison: Dict) -> List[str]:
    """The reference first, then the others in the order of the runs."""
    reference = comparison["reference"]
    return [reference] + [v for v in summary["variants"] if v != reference]


def _check_pair(summary: Dict, comparison: Dict) -> None:
    if summary.get("kind") != "variant summary" or comparison.get("kind") != "paired comparison":
        raise ValueError("write_report takes variant_summary(...) and paired_comparison(...) results")
    if summary["runs"] != comparison["runs"]:
        raise ValueError("the summary and the comparison were computed from different runs")


def protocol_lines(summary: Dict) -> List[str]:
    """The report's header: the protocol the runs share, what varies, the code commits."""
    overview = summary["protocol"]
    common = overview["common"]
    training = common.get("training") or {}
    setting = f"setting {common.get('setting')}"
    if common.get("setting") == 2:
        setting += f" ({common.get('setting2_protocol')}" + (
            f", group {common['group']}" if common.get("group") is not None else "") + ")"
    steps = training.get("n_steps")
    step_text = (f"{steps} training steps" if steps is not None else "training steps not recorded") + (
        f" (checkpoint step {common['checkpoint_step']})" if common.get("checkpoint_step") is not None else "")
    n_runs = len(summary["runs"])
    lines = [
        f"- **protocol**: {common.get('dataset')}, fold(s) {_join(overview['folds'])}, {setting}, "
        f"{grid_summary(common)}, {step_text}, support index(es) {common.get('supp_idx')}, "
        f"n_part {common.get('n_part')}, test classes {common.get('test_classes')}, "
        f"pretrained {common.get('pretrained_weights') or 'none'}",
        f"- **seeds**: {_join(overview['seeds'])}; **runs** (one per variant, seed and fold): {n_runs} ("
        + ", ".join(f"{name} {len(v['runs'])}" for name, v in summary["variants"].items()) + ")",
        "- **variants**: " + "; ".join(
            f"{name} = {v['model']} {json.dumps(v['model_options'], sort_keys=True)}"
            for name, v in overview["variants"].items()),
    ]
    if training:
        options = ", ".join(f"{k} {json.dumps(training[k])}" for k in
                            ("optimizer", "lr", "lr_milestones", "lr_gamma", "weight_decay", "pseudo_labels", "use_gt")
                            if k in training)
        lines.append(f"- **training**: {options}")
    lines.append("- **code**: " + "; ".join(
        f"{(c['commit'] or 'unknown commit')[:12]}{' (uncommitted changes)' if c['dirty'] else ''}: "
        f"{len(c['runs'])} run(s)" for c in overview["code"]))
    return lines


def report_markdown(summary: Dict, comparison: Dict) -> str:
    """report.md (see `write_report`)."""
    _check_pair(summary, comparison)
    variants = _ordered_variants(summary, comparison)
    reference = comparison["reference"]
    boot = summary["bootstrap"]
    level = f"{100 * boot['confidence']:g} %"
    lines = [f"# Comparison of {', '.join(variants)} (reference: {reference})", ""] + protocol_lines(summary)
    lines += ["", f"Dice in %: mean ± std over runs (seeds x folds; std with ddof 1, n/a for one run); "
                  f"{level} interval: percentile bootstrap of the variant's mean, {boot['resampling']}, "
                  f"{boot['n_resamples']} resamples, seed {boot['seed']}.", ""]
    keys = [c["id"] for c in summary["classes"]] + [MEAN]
    titles = {c["id"]: f"{c['name']} (class {c['id']})" for c in summary["classes"]}
    titles[MEAN] = "mean over classes"
    for key in keys:
        lines += [f"## {titles[key]}", "", f"| variant | runs | Dice mean ± std (%) | {level} interval (%) |",
                  "|---|---|---|---|"]
        for variant in variants:
            entry = summary["variants"][variant]["classes"][key]
            mark = " (reference)" if variant == reference else ""
            spread = f" ± {_pct(entry['std'])}" if entry["std"] is not None else " ± n/a"
            lines.append(f"| {variant}{mark} | {entry['n_runs']} | {_pct(entry['mean'])}{spread} | "
                         f"{_pct_interval(entry['ci'])} |")
        lines.append("")
    cboot = comparison["bootstrap"]
    lines += [f"## Paired differences against {reference}", "",
              f"Difference = variant - {reference}, in Dice percentage points, over the pairs (seed, fold, "
              f"support index, class, query volume) present in both; {level} interval: percentile bootstrap of "
              f"the mean difference, {cboot['resampling']}, {cboot['n_resamples']} resamples, seed "
              f"{cboot['seed']}; p: {comparison['test']}. \"all classes\" pools every pair.", "",
              f"| variant | class | difference (points) | {level} interval (points) | p | pairs |",
              "|---|---|---|---|---|---|"]
    untested, unpaired_notes = [], []
    for entry in comparison["comparisons"]:
        for key in keys:
            row = entry["classes"][key]
            name = "all classes" if key == MEAN else row["name"]
            mark = ""
            if row["p_value_reason"]:
                untested.append(f"\\* {entry['variant']}, {name}: no p-value: {row['p_value_reason']}")
                mark = " *"
            lines.append(f"| {entry['variant']} | {name} | {_pct(row['mean_difference'], True)} | "
                         f"{_pct_interval(row['ci'], True)} | {_p_text(row['p_value'])}{mark} | {row['n_pairs']} |")
        unpaired = entry["unpaired"]
        if unpaired["variant"] or unpaired["reference"]:
            unpaired_notes.append(f"- {entry['variant']}: {unpaired['variant']} of its per-volume scores and "
                                  f"{unpaired['reference']} of {reference}'s have no partner and are left out")
    lines += [""] + untested + ([""] if untested else []) + unpaired_notes + ([""] if unpaired_notes else [])
    lines += ["The pairs share query volumes, seeds and support slices, so they are not independent: the "
              "bootstrap interval resamples whole query volumes within each (seed, fold), while the Wilcoxon "
              "test treats the pairs as independent, so its p-value is optimistic when they are not.", ""]
    return "\n".join(lines)


CSV_HEADER = ("table", "variant", "reference", "class_id", "class_name", "n_runs", "n_pairs", "dice_mean",
              "dice_std", "mean_difference", "ci_low", "ci_high", "confidence", "p_value", "note")


def report_rows(summary: Dict, comparison: Dict) -> List[List]:
    """report.csv's rows (header first): one per variant x class ("summary": dice_mean,
    dice_std, ci of the mean) and one per comparison x class ("comparison": mean_difference,
    ci of it, p_value); class_id "mean" is the mean over classes (for comparisons, all
    pairs). Dice and differences in [0, 1] units; an absent value is empty."""
    _check_pair(summary, comparison)

    def number(value) -> str:
        return "" if value is None else repr(float(value))

    def interval(ci) -> List[str]:
        return [number(ci[0]), number(ci[1])] if ci else ["", ""]

    rows: List[List] = [list(CSV_HEADER)]
    keys = [c["id"] for c in summary["classes"]] + [MEAN]
    confidence = number(summary["bootstrap"]["confidence"])
    for variant in _ordered_variants(summary, comparison):
        for key in keys:
            e = summary["variants"][variant]["classes"][key]
            rows.append(["summary", variant, "", key, e["name"], e["n_runs"], "", number(e["mean"]),
                         number(e["std"]), ""] + interval(e["ci"]) + [confidence, "", ""])
    confidence = number(comparison["bootstrap"]["confidence"])
    for entry in comparison["comparisons"]:
        for key in keys:
            e = entry["classes"][key]
            rows.append(["comparison", entry["variant"], entry["reference"], key, e["name"], "", e["n_pairs"], "",
                         "", number(e["mean_difference"])] + interval(e["ci"])
                        + [confidence, number(e["p_value"]), e["p_value_reason"] or ""])
    return rows


# Okabe & Ito (2008), as in fafnet/evaluation/figures.py.
RUN_COLOUR = "#0072B2"          # blue: the runs of a variant
REFERENCE_COLOUR = "#D55E00"    # vermillion: the reference variant's runs
MEAN_COLOUR = "#000000"


def report_png(summary: Dict, comparison: Dict, jitter_seed: int = 0) -> bytes:
    """report.png: one panel per class and one for the mean over classes; x = variants (the
    reference first, marked and shaded), every run's Dice as a jittered point, the variant's
    mean as a line and diamond with its bootstrap interval as error bar, and under each other
    variant's name its mean paired difference to the reference and the p-value."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _check_pair(summary, comparison)
    variants = _ordered_variants(summary, comparison)
    reference = comparison["reference"]
    keys = [c["id"] for c in summary["classes"]] + [MEAN]
    titles = {c["id"]: f"{c['name']} (class {c['id']})" for c in summary["classes"]}
    titles[MEAN] = "mean over classes"
    differences = {e["variant"]: e["classes"] for e in comparison["comparisons"]}
    columns = min(len(keys), 4)
    rows = -(-len(keys) // columns)
    width = max(3.2, 0.9 * len(variants) + 1.6)
    figure = Figure(figsize=(width * columns, 3.8 * rows + 0.9), dpi=110, layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    rng = np.random.default_rng(jitter_seed)
    level = f"{100 * summary['bootstrap']['confidence']:g} %"
    for axis, key in zip(axes, keys):
        shown = []                  # every plotted value, for the y limits
        for x, variant in enumerate(variants):
            data = summary["variants"][variant]
            entry = data["classes"][key]
            is_reference = variant == reference
            if is_reference:
                axis.axvspan(x - 0.45, x + 0.45, color="0.92", zorder=0)
            mean = 100 * entry["mean"]
            axis.hlines(mean, x - 0.3, x + 0.3, color=MEAN_COLOUR, linewidth=1.5, zorder=2)
            if entry["ci"]:
                low, high = (100 * v for v in entry["ci"])
                axis.errorbar(x, mean, yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], fmt="D",
                              color=MEAN_COLOUR, markersize=5, capsize=5, linewidth=1.5, zorder=4)
                shown += [low, high]
            values = np.array([100 * run["dice"][key] for run in data["runs"]])
            axis.scatter(x + rng.uniform(-0.2, 0.2, size=values.size), values, s=22, alpha=0.8, zorder=3,
                         color=REFERENCE_COLOUR if is_reference else RUN_COLOUR, edgecolors="white", linewidths=0.5)
            shown += list(values) + [mean]
        labels = []
        for variant in variants:
            if variant == reference:
                labels.append(f"{variant}\n(reference)")
            else:
                d = differences[variant][key]
                labels.append(f"{variant}\nΔ {_pct(d['mean_difference'], True)} pts\np {_p_text(d['p_value'])}")
        axis.set_xticks(range(len(variants)), labels, fontsize=8)
        axis.set_xlim(-0.6, len(variants) - 0.4)
        axis.set_title(titles[key], fontsize=10)
        axis.set_ylabel("Dice (%)")
        low, high = min(shown), max(shown)
        margin = max(2.0, 0.15 * (high - low))
        axis.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[len(keys):]:
        axis.set_axis_off()
    legend = [Line2D([], [], marker="o", linestyle="", color=RUN_COLOUR, label="one run (seed x fold)"),
              Line2D([], [], marker="o", linestyle="", color=REFERENCE_COLOUR, label="a run of the reference"),
              Line2D([], [], marker="D", color=MEAN_COLOUR, label=f"variant mean with its {level} bootstrap interval"),
              Patch(facecolor="0.92", label="reference variant")]
    figure.legend(handles=legend, loc="outside lower center", ncols=4, fontsize=8)
    common = summary["protocol"]["common"]
    figure.suptitle(f"{common.get('dataset')}, fold(s) {_join(summary['protocol']['folds'])}, seeds "
                    f"{_join(summary['protocol']['seeds'])}: Dice per run; Δ = mean paired difference to "
                    f"{reference} (points), p = Wilcoxon signed-rank", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(summary: Dict, comparison: Dict, out_dir: str) -> Dict[str, str]:
    """Write report.md, report.csv, report.json and report.png into `out_dir` (each atomically)
    and return {file name: path}.

    report.json: {"format": 1, "reference": <variant>, "summary": <variant_summary(...)>,
    "comparison": <paired_comparison(...)>}, where (Dice in [0, 1])

    variant_summary: {"format", "kind": "variant summary",
      "protocol": {"common": <protocol record without FREE_FIELDS>, "variants": {name: {"model",
                   "model_options"}}, "seeds": [...], "folds": [...],
                   "code": [{"commit", "dirty", "runs": [paths]}]},
      "classes": [{"id", "name"}], "bootstrap": {"n_resamples", "seed", "confidence", "method",
      "resampling"}, "runs": [{"variant", "seed", "fold", "path"}],
      "variants": {name: {"runs": [{"seed", "fold", "path", "commit", "dice": {class id | "mean": Dice}}],
                          "classes": {class id | "mean": {"name", "n_runs", "mean", "std", "ci": [low, high],
                                                          "n_resamples_undefined"}}}}}
    paired_comparison: {"format", "kind": "paired comparison", "reference", "classes", "pairing",
      "bootstrap", "test", "runs", "comparisons": [{"variant", "reference", "unpaired": {"variant",
      "reference"}, "classes": {class id | "mean": {"name", "n_pairs", "mean_difference", "ci",
      "n_resamples_undefined", "p_value", "statistic", "n_nonzero", "p_value_reason"}}}]}
    """
    _check_pair(summary, comparison)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in REPORT_FILES}
    atomic_write_text(report_markdown(summary, comparison), paths["report.md"])
    atomic_write_text(csv_text(report_rows(summary, comparison)), paths["report.csv"])
    atomic_write_json({"format": REPORT_FORMAT, "reference": comparison["reference"], "summary": summary,
                       "comparison": comparison}, paths["report.json"])
    atomic_write_bytes(report_png(summary, comparison), paths["report.png"])
    return paths
