"""Evaluation of FAF-Net with the EP1 protocol (SPEC section 10) as a Sacred experiment.

    python test.py with SYNTHETIC eval_fold=0 checkpoint=runs/train/1
    python test.py with SABS eval_fold=0 supp_idx=2 checkpoint=release/fold0.pth
    python test.py with SYNTHETIC eval_fold=0 checkpoint=untrained     # baseline

`checkpoint` is a snapshot of this project (train.py), a training run folder (its latest
snapshot), a folder of training runs (its latest completed run), a checkpoint of the
authors' release (recognised by its key names and converted), or "untrained" (the seeded
initialisation, plus `pretrained_weights` if given).

For each test class, the fold's volume `supp_idx` gives n_part support slices; each other
volume of the fold is a query whose slices containing the class are split into n_part
chunks, chunk i segmented with support slice i through the model's batched `predict`.
Dice and IoU are computed per query volume over its evaluated slices.

Outputs in <runs_dir>/test/<id>/: results.json, results.csv, predictions/ (one NIfTI per
query volume and class, with the query's geometry; the class id where predicted, 0
elsewhere and outside the evaluated slices), figures/ (one PNG per class), test.log.
"""
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config import Settings, build_experiment, observer_run_dir, resolve_settings
from data.nifti_io import write_volume
from dataloaders.datasets import TestDataset
from models import convert_release_checkpoint
from utils import (atomic_write_bytes, atomic_write_json, atomic_write_text, autocast, binary_confusion,
                   build_model, csv_text, dice_from_counts, iou_from_counts, log_to_file,
                   resolve_checkpoint, resolve_device, results_table, seed_everything, to_device_images)

SNAPSHOT_FORMAT = "fafnet-snapshot-v1"   # as written by train.py
UNTRAINED = "untrained"
FIGURE_TILE = 256                        # pixels per tile side in the per-class figures
GREEN, RED = (0, 200, 0), (0, 0, 255)    # OpenCV colours are BGR

ex = build_experiment("FAFNet-test", "test", doc=__doc__)


@ex.main
def main(_config, _run, _log):
    run_dir = observer_run_dir(_run)
    if run_dir is None:
        raise RuntimeError("test.py writes its results into its run folder; do not run it unobserved")
    results = evaluate(_config, run_dir, _log)
    _run.info["mean_dice"] = results["mean_dice"]
    for class_id, entry in results["classes"].items():
        _run.log_scalar(f"dice_{entry['name']}", entry["dice_mean"])
    _run.log_scalar("mean_dice", results["mean_dice"])
    return results["mean_dice"]


# ----------------------------------------------------------------------------- weights


def load_weights(model: torch.nn.Module, checkpoint: Optional[str], image_size: Tuple[int, int]) -> str:
    """Load `checkpoint` into `model` (strict); returns the file it came from, or 'untrained'."""
    if checkpoint is None:
        raise ValueError("checkpoint is not set: pass checkpoint=<snapshot, training run folder or "
                         "release file>, or checkpoint=untrained for the untrained baseline")
    if checkpoint == UNTRAINED:
        return UNTRAINED
    path = resolve_checkpoint(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"checkpoint {path}: cannot be read as a torch file ({err})") from None
    if isinstance(state, dict) and state.get("format") == SNAPSHOT_FORMAT:
        if list(state["image_size"]) != list(image_size):
            raise ValueError(f"checkpoint {path} was trained with image_size={state['image_size']}; "
                             f"evaluate it with image_size={state['image_size']}")
        model.load_state_dict(state["model"], strict=True)
        return path
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    own_keys = set(model.state_dict())
    if set(state) == own_keys:
        model.load_state_dict(state, strict=True)
        return path
    try:
        converted = convert_release_checkpoint(state)
        model.load_state_dict(converted, strict=True)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: neither this project's snapshot nor a loadable release "
                         f"checkpoint for image_size={list(image_size)}: {err}") from None
    return path


# ----------------------------------------------------------------------------- evaluation


@dataclass
class QueryOutcome:
    """One query volume's result for one class."""
    volume_index: int
    slice_indices: List[int]
    prediction: np.ndarray               # bool [n, H, W] over the evaluated slices
    tp: int
    fp: int
    fn: int

    @property
    def dice(self) -> float:
        return dice_from_counts(self.tp, self.fp, self.fn)

    @property
    def iou(self) -> float:
        return iou_from_counts(self.tp, self.fp, self.fn)


@dataclass
class Timer:
    """Forward-pass time and slice count (evaluation throughput)."""
    seconds: float = 0.0
    slices: int = 0
    per_class: Dict[int, float] = field(default_factory=dict)


def eval_batch_size(config: Dict, device: torch.device) -> int:
    """Query slices per forward pass: the configured value, or by default 1 on the CPU (larger
    batches spill layer3's activations out of cache there; bench/bench_model.py) and 8 elsewhere."""
    if config["eval_batch_size"] is not None:
        return config["eval_batch_size"]
    return 1 if device.type == "cpu" else 8


def eval_channels_last(config: Dict, device: torch.device) -> bool:
    """Channels-last weights and inputs: as configured, or by default on the CPU only, where
    it makes the encoder about 16% faster (oneDNN); on CUDA it was measured slower (README)."""
    if config["channels_last"] is not None:
        return config["channels_last"]
    return device.type == "cpu"


def segment_query(model, support: Dict, query: Dict, device: torch.device, config: Dict,
                  timer: Timer) -> np.ndarray:
    """Hard prediction [n, H, W] (bool) of one query volume's evaluated slices: chunk i
    with support slice i, the queries of a chunk in batches of eval_batch_size."""
    channels_last, predictions = config["channels_last"], []
    for part, (start, end) in enumerate(query["chunks"]):
        if end <= start:
            continue
        support_images = to_device_images(support["images"][part:part + 1], device, channels_last)
        support_masks = support["masks"][part:part + 1].to(device)
        query_images = to_device_images(query["images"][start:end], device, channels_last)
        began = time.perf_counter()
        with autocast(device, config["amp_bf16"]):
            foreground = model.predict(support_images, support_masks, query_images,
                                       batch_size=config["eval_batch_size"])
        # argmax over [1 - P, P] picks the foreground exactly when P > 0.5.
        predictions.append((foreground.float() > 0.5).cpu().numpy())
        timer.seconds += time.perf_counter() - began   # .cpu() above waits for the device
        timer.slices += end - start
    height, width = query["images"].shape[-2:]
    return np.concatenate(predictions) if predictions else np.zeros((0, height, width), dtype=bool)


def evaluate_class(model, dataset: TestDataset, class_id: int, device: torch.device, config: Dict,
                   timer: Timer) -> Tuple[Dict, List[QueryOutcome], List[Dict]]:
    """Every query volume of the fold for one class: (support, outcomes, queries)."""
    support = dataset.support(class_id)
    outcomes, queries = [], []
    for query in dataset.queries(class_id):
        if len(query["slice_indices"]) == 0:
            continue  # the class is absent from this volume: nothing to evaluate
        prediction = segment_query(model, support, query, device, config, timer)
        tp, fp, fn = binary_confusion(prediction, query["labels"].numpy())
        outcomes.append(QueryOutcome(query["volume_index"], list(query["slice_indices"]), prediction, tp, fp, fn))
        queries.append(query)
    return support, outcomes, queries


def evaluate(config: Dict, run_dir: str, logger) -> Dict:
    """The EP1 evaluation of one fold; writes every output into `run_dir`, returns the results."""
    settings = resolve_settings(config)
    device = resolve_device(config["device"])
    # The device-dependent defaults, resolved once (results.json records what was used).
    config = {**config, "channels_last": eval_channels_last(config, device),
              "eval_batch_size": eval_batch_size(config, device)}
    with log_to_file(logger, os.path.join(run_dir, "test.log")):
        seed_everything(config["seed"])
        # Pretrained backbone weights matter only for the untrained baseline; a checkpoint
        # overwrites every tensor anyway.
        pretrained = config["pretrained_weights"] if config["checkpoint"] == UNTRAINED else None
        model = build_model(settings.image_size, device, pretrained, config["channels_last"])
        source = load_weights(model, config["checkpoint"], settings.image_size)
        model.eval()
        logger.info("evaluating %s on %s fold %d with %s on %s", source, settings.spec.name,
                    config["eval_fold"], "weights from" if source != UNTRAINED else "no trained weights",
                    device)
        dataset = TestDataset(settings.data_dir, dataset=settings.spec.name, eval_fold=config["eval_fold"],
                              supp_idx=config["supp_idx"], n_part=config["n_part"],
                              n_volumes=config["n_volumes"], test_classes=list(settings.test_classes),
                              image_size=settings.image_size)
        timer = Timer()
        classes = {}
        for class_id in tqdm(settings.test_classes, desc="classes", unit="class", mininterval=1.0):
            support, outcomes, queries = evaluate_class(model, dataset, class_id, device, config, timer)
            name = settings.class_names[class_id]
            classes[str(class_id)] = class_entry(name, support, outcomes)
            if config["save_predictions"]:
                write_predictions(run_dir, class_id, name, outcomes, queries)
            if config["save_figures"] and outcomes:
                write_class_figure(run_dir, class_id, name, support, outcomes[0], queries[0])
        results = results_summary(config, settings, dataset, source, classes, timer)
        write_results(run_dir, results)
        table = results_table(results)
        print(table)
        logger.info("results in %s (mean Dice %.4f)", run_dir, results["mean_dice"])
    return results


def class_entry(name: str, support: Dict, outcomes: List[QueryOutcome]) -> Dict:
    per_volume = [{"volume": o.volume_index, "dice": o.dice, "iou": o.iou, "tp": o.tp, "fp": o.fp,
                   "fn": o.fn, "n_slices": len(o.slice_indices)} for o in outcomes]
    return {
        "name": name,
        "support_volume": support["volume_index"],
        "support_slices": [int(s) for s in support["slice_indices"]],
        "dice_mean": float(np.mean([o.dice for o in outcomes])) if outcomes else float("nan"),
        "iou_mean": float(np.mean([o.iou for o in outcomes])) if outcomes else float("nan"),
        "per_volume": per_volume,
    }


def results_summary(config: Dict, settings: Settings, dataset: TestDataset, source: str,
                    classes: Dict, timer: Timer) -> Dict:
    dice = [c["dice_mean"] for c in classes.values() if c["per_volume"]]
    iou = [c["iou_mean"] for c in classes.values() if c["per_volume"]]
    return {
        "dataset": settings.spec.name, "eval_fold": config["eval_fold"], "setting": config["setting"],
        "checkpoint": source, "data_dir": settings.data_dir, "image_size": list(settings.image_size),
        "fold_volumes": dataset.fold_volumes, "support_volume": dataset.support_volume,
        "query_volumes": dataset.query_volumes, "n_part": config["n_part"],
        "amp_bf16": config["amp_bf16"], "channels_last": config["channels_last"],
        "eval_batch_size": config["eval_batch_size"],
        "classes": classes,
        "mean_dice": float(np.mean(dice)) if dice else float("nan"),
        "mean_iou": float(np.mean(iou)) if iou else float("nan"),
        "timing": {"forward_seconds": timer.seconds, "slices": timer.slices,
                   "slices_per_second": timer.slices / timer.seconds if timer.seconds else None},
    }


# ----------------------------------------------------------------------------- outputs


def write_results(run_dir: str, results: Dict) -> None:
    atomic_write_json(results, os.path.join(run_dir, "results.json"))
    rows = [["query_volume", "class_id", "class_name", "dice", "iou", "n_slices"]]
    for class_id, entry in results["classes"].items():
        for v in entry["per_volume"]:
            rows.append([v["volume"], class_id, entry["name"], f"{v['dice']:.6f}", f"{v['iou']:.6f}", v["n_slices"]])
    for class_id, entry in results["classes"].items():
        rows.append(["mean", class_id, entry["name"], f"{entry['dice_mean']:.6f}", f"{entry['iou_mean']:.6f}",
                     sum(v["n_slices"] for v in entry["per_volume"])])
    rows.append(["mean", "all", "mean over classes", f"{results['mean_dice']:.6f}", f"{results['mean_iou']:.6f}", ""])
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
                            f"query_{outcome.volume_index}_class_{class_id}_{_slug(name)}.nii.gz")
        write_volume(prediction_volume(outcome, query["volume_shape"], class_id), query["geometry"], path)


def write_class_figure(run_dir: str, class_id: int, name: str, support: Dict, outcome: QueryOutcome,
                       query: Dict) -> None:
    """PNG: the middle support slice with its mask (green), then the middle slice of each
    query chunk of the first query volume with ground truth (green) and prediction (red)."""
    middle = len(support["slice_indices"]) // 2
    tiles = [_tile(support["images"][middle, 0].numpy(), [(support["masks"][middle].numpy(), GREEN)],
                   [f"{name}: support v{support['volume_index']} z{support['slice_indices'][middle]}",
                    "green: support mask"])]
    for part, (start, end) in enumerate(query["chunks"]):
        if end <= start:
            continue
        i = (start + end - 1) // 2
        tiles.append(_tile(query["images"][i, 0].numpy(),
                           [(query["labels"][i].numpy(), GREEN), (outcome.prediction[i], RED)],
                           [f"query v{outcome.volume_index} z{outcome.slice_indices[i]} (chunk {part})",
                            "green: truth, red: prediction"]))
    figure = np.concatenate(tiles, axis=1)
    ok, png = cv2.imencode(".png", figure)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the figure of class {class_id}")
    atomic_write_bytes(png.tobytes(), os.path.join(run_dir, "figures", f"class_{class_id}_{_slug(name)}.png"))


def _tile(image: np.ndarray, outlines: List[Tuple[np.ndarray, Tuple[int, int, int]]],
          caption: List[str]) -> np.ndarray:
    """One FIGURE_TILE x FIGURE_TILE BGR tile: the grey image min-max scaled, mask outlines,
    caption lines at the top."""
    low, high = float(image.min()), float(image.max())
    grey = ((image - low) / (high - low + 1e-8) * 255).astype(np.uint8)
    tile = cv2.cvtColor(cv2.resize(grey, (FIGURE_TILE, FIGURE_TILE), interpolation=cv2.INTER_LINEAR),
                        cv2.COLOR_GRAY2BGR)
    for mask, colour in outlines:
        big = cv2.resize(mask.astype(np.uint8), (FIGURE_TILE, FIGURE_TILE), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, colour, 1)
    for line, text in enumerate(caption):
        cv2.putText(tile, text, (4, 14 + 14 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return tile


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


if __name__ == "__main__":
    ex.run_commandline()
