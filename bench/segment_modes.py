"""What segment.py's pairing modes cost against the evaluation protocol, on a dataset folder.

For one fold and support position of a dataset folder (the community's CMR, say), this runs
segment.py with the fold's support volume and its mask as support and every other fold volume
as a query, twice: (b) with each query's true range per label (first to last slice holding the
label, from the query's own labels, as the evaluation takes it) and (c) without ranges; each
with --reference, so segment.py computes Dice on the query files' grid. (a) is read from an
evaluation run of test.py with the same checkpoint, fold and support (its results.json).
Prints one table (mean Dice over the queries, %) and, with --json, writes the numbers.

    python bench/segment_modes.py --checkpoint RUN --data-dir CMR/cmr_MR_normalized --dataset CMR \\
        --evaluation runs/test/5 --out segment_modes --json segment_modes.json
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # segment.py is a script at the repository root

from fafnet.io.atomic import atomic_write_json  # noqa: E402
from fafnet.io.layout import DatasetLayout  # noqa: E402
from fafnet.io.nifti import read_volume  # noqa: E402
from fafnet.datasets.specs import get_dataset_spec  # noqa: E402
from fafnet.evaluation.results import load_results  # noqa: E402


def raw_labels(spec) -> Dict[int, int]:
    """class id -> the value stored in the label files (CMR: 1 -> 200)."""
    if spec.label_map is None:
        return {c: c for c in spec.test_classes}
    return {mapped: raw for raw, mapped in spec.label_map.items()}


def true_ranges(label_path: str, values: Sequence[int]) -> Dict[int, Optional[tuple]]:
    """value -> (first, last + 1) of the slices holding it, None when absent."""
    labels, _ = read_volume(label_path, dtype=np.int64)
    ranges = {}
    for value in values:
        slices = np.flatnonzero((labels == value).any(axis=(1, 2)))
        ranges[value] = (int(slices[0]), int(slices[-1]) + 1) if slices.size else None
    return ranges


def run_segment(arguments: List[str]) -> float:
    from fafnet.cli import segment
    started = time.perf_counter()
    status = segment.main(arguments)
    if status != 0:
        raise SystemExit(f"segment.py failed ({status}): {' '.join(arguments)}")
    return time.perf_counter() - started


def mode_dice(out_dir: str, query_names: Sequence[str], values: Sequence[int]) -> Dict[int, List[float]]:
    dice = {v: [] for v in values}
    for name in query_names:
        with open(os.path.join(out_dir, f"{name}.json"), encoding="utf-8") as f:
            record = json.load(f)
        for value in values:
            entry = record["labels"].get(str(value))
            if entry is not None and entry.get("dice") is not None:
                dice[value].append(entry["dice"])
    return dice


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--supp-idx", type=int, default=2, help="support position in the fold (default 2)")
    parser.add_argument("--evaluation", required=True, help="test.py run of the same checkpoint, fold, support")
    parser.add_argument("--out", required=True, help="folder for segment.py's outputs")
    parser.add_argument("--json", help="write the table's numbers here")
    args = parser.parse_args(argv)

    spec = get_dataset_spec(args.dataset)
    layout = DatasetLayout(args.data_dir)
    fold = sorted(spec.folds(len(layout))[args.fold])
    support, queries = layout[fold[args.supp_idx]], [layout[p] for p in fold if p != fold[args.supp_idx]]
    values = raw_labels(spec)
    names = [os.path.basename(q.image).split(".nii")[0] for q in queries]
    common = ["--checkpoint", args.checkpoint, "--support-image", support.image, "--support-mask", support.label,
              "--label", *map(str, values.values()), "--query", *[q.image for q in queries],
              "--reference", *[q.label for q in queries]]
    ranges = []
    for position, query in enumerate(queries):
        for value, bounds in true_ranges(query.label, values.values()).items():
            if bounds:
                ranges += ["--query-range", f"{position}:{value}={bounds[0]}:{bounds[1]}"]
    seconds = {"b": run_segment(common + ranges + ["--out", os.path.join(args.out, "b_true_range")]),
               "c": run_segment(common + ["--out", os.path.join(args.out, "c_no_range")])}
    dice = {mode: mode_dice(os.path.join(args.out, folder), names, values.values())
            for mode, folder in (("b", "b_true_range"), ("c", "c_no_range"))}
    evaluation = load_results(args.evaluation)
    rows, numbers = [], {}
    for class_id, value in values.items():
        a = evaluation["classes"][str(class_id)]["dice_mean"]
        b, c = (float(np.mean(dice[m][value])) for m in ("b", "c"))
        numbers[spec.classes[class_id]] = {"a": a, "b": b, "c": c, "b_per_query": dice["b"][value],
                                           "c_per_query": dice["c"][value]}
        rows.append(f"| {spec.classes[class_id]} | {100 * a:.2f} | {100 * b:.2f} | {100 * c:.2f} |")
    means = {m: float(np.mean([numbers[n][m] for n in numbers])) for m in "abc"}
    print(f"{args.dataset} fold {args.fold}, support {support.name}, queries {', '.join(q.name for q in queries)}; "
          f"checkpoint {args.checkpoint}")
    print("| class | (a) evaluation protocol | (b) --query-range, true range | (c) no range |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"| mean | {100 * means['a']:.2f} | {100 * means['b']:.2f} | {100 * means['c']:.2f} |")
    print(f"segment.py wall time for {len(queries)} queries x {len(values)} labels: (b) {seconds['b']:.1f} s, "
          f"(c) {seconds['c']:.1f} s")
    if args.json:
        atomic_write_json({"classes": numbers, "means": means, "seconds": seconds, "support": support.name,
                           "queries": [q.name for q in queries], "checkpoint": args.checkpoint,
                           "evaluation": evaluation["_path"]}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
