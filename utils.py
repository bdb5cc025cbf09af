"""Shared helpers of the experiment layer: metrics, atomic writes, logging, devices, RNG
state, checkpoint lookup, and the fold aggregator.

From the command line, ``python utils.py show RUN...`` prints evaluation runs' tables, and::

    python utils.py aggregate runs/SYNTHETIC_setting2/fold*/test/1 --out runs/SYNTHETIC_setting2/results_table

collects each evaluation run's ``results.json`` into the literature's table (Dice per organ
and the mean over organs, one row per fold, then mean +- std over folds) and writes it as
``<out>.md`` and ``<out>.csv``.
"""
import argparse
import csv
import io
import json
import logging
import os
import random
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# ----------------------------------------------------------------------------- metrics


def binary_confusion(prediction, label) -> Tuple[int, int, int]:
    """True positives, false positives and false negatives of two binary masks.

    Args:
        prediction: array or tensor of any shape, non-zero = foreground.
        label: same shape as `prediction`, non-zero = foreground.
    Returns:
        (tp, fp, fn) as Python ints, summed over every element.
    """
    prediction = _as_bool_array(prediction)
    label = _as_bool_array(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} != label shape {label.shape}")
    tp = int(np.count_nonzero(prediction & label))
    fp = int(np.count_nonzero(prediction & ~label))
    fn = int(np.count_nonzero(~prediction & label))
    return tp, fp, fn


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN).

    Convention for the empty case: when prediction and label are both empty (the denominator
    is 0) the masks agree perfectly and Dice is 1.0. An empty prediction against a non-empty
    label (or the reverse) gives 0.0 through the formula. In the EP1 protocol every evaluated
    slice contains the class, so the empty-label case never reaches the reported numbers.
    """
    _check_counts(tp, fp, fn)
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN), with the same empty-case convention as Dice
    (both masks empty: 1.0)."""
    _check_counts(tp, fp, fn)
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else tp / denominator


def dice_score(prediction, label) -> float:
    """Dice of two binary masks of the same shape (see `dice_from_counts`)."""
    return dice_from_counts(*binary_confusion(prediction, label))


def iou_score(prediction, label) -> float:
    """IoU of two binary masks of the same shape (see `iou_from_counts`)."""
    return iou_from_counts(*binary_confusion(prediction, label))


def _as_bool_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x) != 0


def _check_counts(tp: int, fp: int, fn: int) -> None:
    if min(tp, fp, fn) < 0:
        raise ValueError(f"confusion counts must be non-negative, got tp={tp} fp={fp} fn={fn}")


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the destination folder; on success it is renamed onto
    `path` (os.replace is atomic on one file system), on failure it is removed. Readers
    therefore see either the old file or the complete new one, never a truncated one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = "".join(re.findall(r"(\.[A-Za-z0-9]+)$", os.path.basename(path)))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path: str) -> None:
    """torch.save through a temporary file, so a killed run never leaves a half snapshot."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def atomic_write_bytes(data: bytes, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_json(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def csv_text(rows: Sequence[Sequence]) -> str:
    """Rows (header first) as CSV text."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- logging


@contextmanager
def log_to_file(logger: logging.Logger, path: str) -> Iterator[logging.Handler]:
    """Copy `logger`'s records into `path` for the duration of the block (the handler is
    removed afterwards, so consecutive runs in one process do not write into each other's
    logs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        # An embedding application (pytest, a notebook) may have set the root to WARNING;
        # the run's log must still get the INFO progress lines.
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


# ----------------------------------------------------------------------------- devices, RNG


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; 'cpu', 'cuda', 'cuda:N' and 'mps' are taken
    as given but must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA, but torch sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} asked for MPS, but it is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r}: only auto, cpu, cuda, cuda:N and mps are supported")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> Dict:
    """Every global RNG state, in a form `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict) -> None:
    """Inverse of `capture_rng_state` (CUDA states are restored only where CUDA exists)."""
    random.setstate(_to_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- checkpoints

SNAPSHOT_PATTERN = re.compile(r"^step_(\d+)\.pth$")


def snapshot_path(run_dir: str, step: int) -> str:
    """Where training run `run_dir` keeps its snapshot of `step`."""
    return os.path.join(run_dir, "snapshots", f"step_{step:07d}.pth")


def list_snapshots(run_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of every snapshot of a training run, by ascending step."""
    folder = os.path.join(run_dir, "snapshots")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = SNAPSHOT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def resolve_checkpoint(path: str) -> str:
    """Turn what a user names as a checkpoint into a file path.

    Accepts a file (a snapshot of this project or a release checkpoint); a training run folder
    (its latest snapshot); or a folder of Sacred runs such as ``runs/.../train`` (the latest
    snapshot of its highest-numbered run whose status is COMPLETED).
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file or folder")
    snapshots = list_snapshots(path)
    if snapshots:
        return snapshots[-1][1]
    runs = sorted((int(name), os.path.join(path, name)) for name in os.listdir(path)
                  if name.isdigit() and os.path.isdir(os.path.join(path, name)))
    for _, run_dir in reversed(runs):
        if _run_status(run_dir) == "COMPLETED" and list_snapshots(run_dir):
            return list_snapshots(run_dir)[-1][1]
    raise FileNotFoundError(
        f"checkpoint {path!r}: no snapshots/step_*.pth in it and no completed training run "
        f"below it")


def _run_status(run_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- model set-up


def build_model(image_size: Sequence[int], device: torch.device, pretrained_weights: Optional[str] = None,
                channels_last: bool = False) -> torch.nn.Module:
    """FAFNet on `device`, optionally with channels-last weights (convolutions then run in
    NHWC, which tensor cores prefer)."""
    from models import FAFNet  # imported here so the metrics above do not need the model

    model = FAFNet(image_size=tuple(image_size), pretrained_weights=pretrained_weights).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move an image batch [N, 3, H, W] to `device`, channels-last if asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def autocast(device: torch.device, amp_bf16: bool):
    """bf16 autocast on `device` when `amp_bf16`, else a no-op context. The model keeps its
    FFT and probability arithmetic in float32 itself."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_bf16)


# ----------------------------------------------------------------------------- aggregation


def load_results(path: str) -> Dict:
    """Read an evaluation run's results.json (given the file or its run folder)."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r}: no results.json (is it an evaluation run folder?)")
    with open(file, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except ValueError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from None
    for key in ("eval_fold", "classes", "mean_dice"):
        if key not in results:
            raise ValueError(f"{file}: missing key {key!r}; not a results.json written by test.py")
    results["_path"] = file
    return results


def results_table(results: Dict) -> str:
    """One evaluation run as a Markdown table: Dice and IoU (%) per class and their mean."""
    lines = [f"{results['dataset']} fold {results['eval_fold']}, checkpoint {results['checkpoint']}; "
             f"support volume {results['support_volume']}, query volumes {results['query_volumes']}",
             "",
             "| class | Dice (%) | IoU (%) | query volumes |",
             "|---|---|---|---|"]
    for entry in results["classes"].values():
        lines.append(f"| {entry['name']} | {100 * entry['dice_mean']:.2f} | {100 * entry['iou_mean']:.2f} "
                     f"| {len(entry['per_volume'])} |")
    lines.append(f"| **mean** | {100 * results['mean_dice']:.2f} | {100 * results['mean_iou']:.2f} | |")
    return "\n".join(lines) + "\n"


def aggregate_folds(paths: Sequence[str], metric: str = "dice") -> Tuple[List[str], List[List]]:
    """Collect evaluation runs (one per fold) into the literature's table.

    Returns (header, rows): header = ["fold", <class names...>, "Mean"]; one row per fold
    (sorted by fold) with the metric in percent, then a "mean" and a "std" row over folds
    (std is the sample standard deviation, ddof=1; 0 with a single fold). A fold's "Mean" is
    its mean over classes, as the literature reports it.
    """
    if metric not in ("dice", "iou"):
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    if not paths:
        raise ValueError("aggregate needs at least one evaluation run")
    by_fold: Dict[int, Dict] = {}
    for path in paths:
        results = load_results(path)
        fold = int(results["eval_fold"])
        if fold in by_fold:
            raise ValueError(f"fold {fold} appears twice: {by_fold[fold]['_path']} and "
                             f"{results['_path']}; pass one evaluation run per fold")
        by_fold[fold] = results
    class_ids = list(next(iter(by_fold.values()))["classes"])
    for fold, results in by_fold.items():
        if list(results["classes"]) != class_ids:
            raise ValueError(f"{results['_path']}: classes {list(results['classes'])} differ "
                             f"from the other runs' {class_ids}")
    names = [by_fold[min(by_fold)]["classes"][c]["name"] for c in class_ids]
    header = ["fold"] + names + ["Mean"]
    table = []
    for fold in sorted(by_fold):
        classes = by_fold[fold]["classes"]
        values = [100.0 * classes[c][f"{metric}_mean"] for c in class_ids]
        table.append([fold] + values + [float(np.mean(values))])
    values = np.array([row[1:] for row in table], dtype=np.float64)
    std = values.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(values.shape[1])
    rows = table + [["mean"] + list(values.mean(axis=0))] + [["std"] + list(std)]
    return header, rows


def fold_table_markdown(header: List[str], rows: List[List]) -> str:
    """Markdown table: one row per fold, then a 'mean +- std' row (values in percent)."""
    per_fold = [r for r in rows if r[0] not in ("mean", "std")]
    mean = next(r for r in rows if r[0] == "mean")
    std = next(r for r in rows if r[0] == "std")
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    for row in per_fold:
        lines.append("| " + " | ".join([str(row[0])] + [f"{v:.2f}" for v in row[1:]]) + " |")
    lines.append("| mean ± std | " + " | ".join(
        f"{m:.2f} ± {s:.2f}" for m, s in zip(mean[1:], std[1:])) + " |")
    return "\n".join(lines) + "\n"


def fold_table_csv(header: List[str], rows: List[List]) -> str:
    return csv_text([header] + [[r[0]] + [f"{v:.4f}" for v in r[1:]] for r in rows])


def _aggregate_command(args: argparse.Namespace) -> int:
    header, rows = aggregate_folds(args.runs, metric=args.metric)
    markdown = fold_table_markdown(header, rows)
    print(f"{args.metric} (%) over {len(rows) - 2} fold(s):\n")
    print(markdown)
    if args.out:
        atomic_write_text(markdown, args.out + ".md")
        atomic_write_text(fold_table_csv(header, rows), args.out + ".csv")
        print(f"wrote {args.out}.md and {args.out}.csv")
    return 0


def _show_command(args: argparse.Namespace) -> int:
    for path in args.runs:
        results = load_results(path)
        print(f"{results['_path']}:")
        print(results_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Experiment-layer utilities.")
    commands = parser.add_subparsers(dest="command", required=True)
    aggregate = commands.add_parser(
        "aggregate", help="collect the folds' evaluation runs into the literature's table",
        description="Collect one evaluation run per fold (folders holding results.json, or the "
                    "files themselves) into a table of Dice per organ and mean, with mean +- "
                    "std over folds; print it as Markdown and optionally write .md and .csv.")
    aggregate.add_argument("runs", nargs="+", help="evaluation run folders or results.json files")
    aggregate.add_argument("--metric", choices=("dice", "iou"), default="dice")
    aggregate.add_argument("--out", help="write OUT.md and OUT.csv (atomically)")
    aggregate.set_defaults(func=_aggregate_command)
    show = commands.add_parser("show", help="print evaluation runs' results tables",
                               description="Print the Dice/IoU table of each evaluation run.")
    show.add_argument("runs", nargs="+", help="evaluation run folders or results.json files")
    show.set_defaults(func=_show_command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
