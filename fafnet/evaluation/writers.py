"""An evaluation's files: results.json and results.csv, prediction volumes (NIfTI on the
query's grid), one figure per class. Every file is written atomically."""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from fafnet.evaluation.figures import class_figure_png
from fafnet.evaluation.outcomes import QueryOutcome
from fafnet.evaluation.results import csv_text, mean_coverage
from fafnet.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from fafnet.io.logs import slug
from fafnet.io.nifti import write_volume


def _number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6f}"


def write_results(run_dir: str, results: Dict) -> None:
    atomic_write_json(results, os.path.join(run_dir, "results.json"))
    rows = [["supp_idx", "query_volume", "query_image", "class_id", "class_name", "dice", "iou", "n_slices"]]
    for supp_idx, support in results["supports"].items():
        for class_id, entry in support["classes"].items():
            for v in entry["per_volume"]:
                rows.append([supp_idx, v["volume"], v["image"], class_id, entry["name"], _number(v["dice"]),
                             _number(v["iou"]), v["n_slices"]])
    for class_id, entry in results["classes"].items():
        rows.append(["all", "mean", "", class_id, entry["name"], _number(entry["dice_mean"]),
                     _number(entry["iou_mean"]), ""])
    rows.append(["all", "mean", "", "all", f"mean over {mean_coverage(results['classes'])}",
                 _number(results["mean_dice"]), _number(results["mean_iou"]), ""])
    atomic_write_text(csv_text(rows), os.path.join(run_dir, "results.csv"))


def prediction_volume(outcome: QueryOutcome, volume_shape: Tuple[int, ...], class_id: int) -> np.ndarray:
    """Full [Z, H, W] uint8 volume: class_id where predicted on the evaluated slices, else 0."""
    volume = np.zeros(volume_shape, dtype=np.uint8)
    volume[outcome.slice_indices] = outcome.prediction.astype(np.uint8) * class_id
    return volume


def write_predictions(run_dir: str, class_id: int, name: str, outcomes: List[QueryOutcome],
                      queries: List[Dict]) -> None:
    for outcome, query in zip(outcomes, queries):
        path = os.path.join(run_dir, "predictions",
                            f"query_{query['image_number']}_class_{class_id}_{slug(name)}.nii.gz")
        write_volume(prediction_volume(outcome, query["volume_shape"], class_id), query["geometry"], path)


def short_path(path: str, parts: int = 4) -> str:
    """The last `parts` components of a path ('train/3/snapshots/final.pth'): enough to tell
    runs apart in a figure title."""
    return os.path.join(*os.path.normpath(path).split(os.sep)[-parts:])


def write_class_figure(run_dir: str, title: str, class_id: int, name: str, support: Dict,
                       outcomes: List[QueryOutcome], queries: List[Dict]) -> None:
    """figures/class_<id>_<name>.png (fafnet/evaluation/figures.py)."""
    png = class_figure_png(title, support, outcomes, queries)
    atomic_write_bytes(png, os.path.join(run_dir, "figures", f"class_{class_id}_{slug(name)}.png"))


def write_combined_predictions(run_dir: str, predicted: Dict[int, Dict]) -> None:
    """predictions/query_<i>_all_classes.nii.gz (i of the query's image_<i>): every class's
    prediction in one label volume (a viewer then shows all organs at once); where two
    classes' predictions overlap, the one later in test_classes is kept."""
    for entry in predicted.values():
        combined = np.zeros(entry["shape"], dtype=np.uint8)
        for class_id, outcome in entry["classes"]:
            region = prediction_volume(outcome, entry["shape"], class_id) > 0
            combined[region] = class_id
        write_volume(combined, entry["geometry"],
                     os.path.join(run_dir, "predictions", f"query_{entry['number']}_all_classes.nii.gz"))
