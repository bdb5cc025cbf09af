"""The shared 1-way 1-shot evaluation protocol (docs/protocol.md, evaluation).

For each support index and test class, the fold's volume `supp_idx` gives n_part support
slices; each other volume of the fold is a query whose slices containing the class are split
into n_part chunks, chunk i segmented with support slice i through the model's batched
`predict`. Dice and IoU are computed per query volume over its evaluated slices; a class's
score is the mean over query volumes, averaged over the support indices when several are
given. A query volume without the class, an empty chunk, or a support volume without the
class is recorded as skipped; means over classes cover the classes with a score and say so.
`evaluate(config, run_dir, logger)` runs it from a run's (Sacred) config dict; the command
line around it is `fafnet.cli.evaluate`.
"""
import datetime
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.evaluation import EvaluationFold, TestDataset
from fafnet.evaluation.graphs import GraphedPredict
from fafnet.evaluation.metrics import binary_confusion
from fafnet.evaluation.outcomes import QueryOutcome
from fafnet.evaluation.predict import InferenceOptions, Timer, chunk_runs, predict_runs
from fafnet.evaluation.results import mean_coverage, results_table, scored_classes
from fafnet.evaluation.writers import (short_path, write_class_figure, write_combined_predictions,
                                       write_predictions, write_results)
from fafnet.io.atomic import atomic_write_json
from fafnet.io.logs import log_to_file
from fafnet.io.progress import progress
from fafnet.io.provenance import protocol_record
from fafnet.models import build_model, model_counters, predict_batch_size, resolve_model_options
from fafnet.runtime.devices import configure_threads, eval_channels_last, resolve_device
from fafnet.runtime.rng import seed_everything
from fafnet.runtime.runs import Terminated
from fafnet.runtime.checkpoints import (LoadedCheckpoint, checkpoint_model, load_checkpoint_state, read_checkpoint,
                                        unfinished_run_warning)
from fafnet.runtime.snapshots import SnapshotError
from fafnet.runtime.training_data import OVERLAP, UNCHECKED, evaluation_data_record, leakage_record

UNTRAINED = "untrained"   # checkpoint=untrained: the seeded initialisation, the baseline of a table
# Written into an evaluation's run folder when Ctrl-C or SIGTERM stops it before results.json.
PARTIAL_NAME = "partial.json"
EVALUATION_ADVICE = ("; an evaluation cannot be resumed: run it again (its run folder's partial.json marks "
                     "its predictions and figures as partial)")


def supp_indices(config: Dict) -> list:
    """`supp_idx` as a list (a single index or a list of them)."""
    value = config["supp_idx"]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def class_names(dataset: str, class_ids: Sequence[int]) -> Dict[int, str]:
    """class id -> its name in the dataset ("class <id>" for an id it does not name)."""
    classes = get_dataset_spec(dataset).classes
    return {int(c): classes.get(int(c), f"class {c}") for c in class_ids}


class NothingEvaluatedError(ValueError):
    """Every test class was skipped: the run has no score (results.json lists the skips)."""


@dataclass
class EvaluatedModel:
    """The model an evaluation runs, with what it was built from."""
    model: torch.nn.Module
    name: str                     # its registry name
    options: Dict                 # every option of the model
    loaded: LoadedCheckpoint      # the weights' file, step, training config and data
    warnings: List[str] = field(default_factory=list)   # about the checkpoint (results.json "warnings")


def load_model(config: Dict, device: torch.device) -> EvaluatedModel:
    """The model of `checkpoint`, built with the checkpoint's own model and options
    (`checkpoint_model`) and loaded (strict); checkpoint=untrained: the config's model, seeded,
    with `pretrained_weights` if given. `checkpoint_wanted` says what a run picked from a folder
    of training runs must have been trained on."""
    checkpoint = config["checkpoint"]
    if checkpoint is None:
        raise ValueError("config option checkpoint is not set: pass checkpoint=<snapshot, training run folder "
                         "or release file>, or checkpoint=untrained for the untrained baseline")
    channels_last = eval_channels_last(config["channels_last"], device)
    if checkpoint == UNTRAINED:
        options = resolve_model_options(config["model"], config["model_options"])
        model = build_model(config["model"], config["image_size"], device=device,
                            pretrained_weights=config["pretrained_weights"],
                            allow_partial_pretrained=config["pretrained_allow_partial"],
                            channels_last=channels_last, options=options)
        return EvaluatedModel(model, config["model"], options, LoadedCheckpoint(UNTRAINED, 0, None, None))
    path, state = read_checkpoint(checkpoint, wanted=checkpoint_wanted(config))
    name, options = checkpoint_model(path, state, config["model"], config["model_options"])
    # A checkpoint overwrites every tensor: no pretrained file is read.
    model = build_model(name, config["image_size"], device=device, channels_last=channels_last, options=options)
    loaded = load_checkpoint_state(model, path, state, config["image_size"], name)
    unfinished = unfinished_run_warning(path, state)
    return EvaluatedModel(model, name, options, loaded, [unfinished] if unfinished else [])


def checkpoint_wanted(config: Dict) -> Dict:
    """The training options a run chosen from a folder of runs must share with this
    evaluation: model, dataset, fold and setting (with its protocol and group)."""
    wanted = {"model": config["model"], "dataset": config["dataset"], "eval_fold": config["eval_fold"],
              "setting": config["setting"]}
    if config["setting"] == 2:
        wanted["setting2_protocol"] = config["setting2_protocol"]
        if config["setting2_protocol"] == "groups":
            wanted["group"] = config["group"]
    return wanted


def check_leakage(config: Dict, loaded: LoadedCheckpoint, fold_volumes: List[int], logger) -> Dict:
    """The leakage record of results.json; a checkpoint trained on volumes of the evaluated
    fold is refused unless allow_leakage=True, one that cannot be checked gets a warning."""
    record = leakage_record(loaded.training_data, loaded.config, config["dataset"], config["eval_fold"],
                            fold_volumes, untrained=loaded.path == UNTRAINED)
    record["allow_leakage"] = config["allow_leakage"]
    if record["status"] == OVERLAP and not config["allow_leakage"]:
        raise SnapshotError(f"checkpoint={config['checkpoint']!r}: {loaded.path} was {record['reason']}, so its "
                            f"scores would measure training data; evaluate the checkpoint trained with "
                            f"eval_fold={config['eval_fold']}, or pass allow_leakage=True to evaluate it "
                            f"anyway (recorded, and refused by the fold table)")
    if record["status"] == OVERLAP:
        logger.warning("allow_leakage=True: %s was %s", loaded.path, record["reason"])
    elif record["status"] == UNCHECKED:
        logger.warning("test-set leakage cannot be checked for %s: %s", loaded.path, record["reason"])
    return record


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Skips:
    """Work the protocol could not do, recorded with its reason."""
    entries: List[Dict] = field(default_factory=list)

    def add(self, logger, class_id: int, class_name: str, supp_idx: int, what: str, reason: str) -> None:
        self.entries.append({"class_id": class_id, "class_name": class_name, "supp_idx": supp_idx,
                             "what": what, "reason": reason})
        logger.warning("skipped class %d (%s), support index %d, %s: %s", class_id, class_name,
                       supp_idx, what, reason)


def segment_query(model, support: Dict, query: Dict, device: torch.device, options: InferenceOptions,
                  timer: Timer) -> np.ndarray:
    """Hard prediction [n, H, W] (bool) of one query volume's evaluated slices: chunk i
    with support slice i (fafnet/evaluation/predict.py, shared with segment.py), the queries of a
    chunk in batches of `options.batch_size`. `model` is a model of fafnet.models.interface, or a
    GraphedPredict of one (eval_graphs)."""
    foreground = predict_runs(model, support["images"], support["masks"], query["images"],
                              chunk_runs(query["chunks"]), device, options, timer)
    # argmax over [1 - P, P] picks the foreground exactly when P > 0.5.
    return foreground > 0.5


def query_text(query: Dict) -> str:
    return f"query volume {query['volume_index']} ({query['image_name']})"


def evaluate_class(model, dataset: EvaluationFold, class_id: int, name: str, device: torch.device,
                   options: InferenceOptions, timer: Timer, skips: Skips, logger, bar
                   ) -> Tuple[Optional[Dict], List[QueryOutcome], List[Dict]]:
    """Every query volume of the fold for one class and the selected support volume:
    (support or None when the support volume lacks the class, outcomes, queries). `bar`
    counts the query slices segmented (fafnet/io/progress.py)."""
    try:
        support = dataset.support(class_id)
    except ValueError as err:  # the support volume does not contain the class
        skips.add(logger, class_id, name, dataset.supp_idx,
                  f"support volume {dataset.support_volume} ({dataset.file_name(dataset.support_volume)})", str(err))
        return None, [], []
    outcomes, queries = [], []
    for query in dataset.queries(class_id):
        n_slices = len(query["slice_indices"])
        if n_slices == 0:
            skips.add(logger, class_id, name, dataset.supp_idx, query_text(query),
                      "the class does not occur in this volume")
            continue
        empty = [part for part, (start, end) in enumerate(query["chunks"]) if end <= start]
        if empty:
            skips.add(logger, class_id, name, dataset.supp_idx, query_text(query),
                      f"chunk(s) {empty} empty: {n_slices} slice(s) for n_part={dataset.n_part}, "
                      f"so support slice(s) {empty} segment nothing")
        prediction = segment_query(model, support, query, device, options, timer)
        bar.update(n_slices)
        tp, fp, fn = binary_confusion(prediction, query["labels"].numpy())
        outcomes.append(QueryOutcome(query["volume_index"], query["image_name"], list(query["slice_indices"]),
                                     prediction, tp, fp, fn))
        queries.append(query)
    return support, outcomes, queries


def evaluate(config: Dict, run_dir: str, logger) -> Dict:
    """The evaluation of one fold; writes every output into `run_dir`, returns the results.
    Stopped by Ctrl-C or SIGTERM before results.json, it leaves partial.json in `run_dir`
    (`mark_partial`) and re-raises with `advice` (an evaluation is run again, not resumed)."""
    with log_to_file(logger, os.path.join(run_dir, "test.log")):
        try:
            return evaluate_fold(config, run_dir, logger)
        except KeyboardInterrupt as interrupt:
            interrupt.advice = EVALUATION_ADVICE
            mark_partial(run_dir, interrupt, logger)
            raise


def mark_partial(run_dir: str, interrupt: KeyboardInterrupt, logger) -> None:
    """Write partial.json (atomically) into a stopped evaluation's run folder, unless its
    results.json was written: the predictions and figures there are those of the classes
    done before the stop."""
    if os.path.isfile(os.path.join(run_dir, "results.json")):
        return
    how = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
    atomic_write_json({"partial": True, "stopped_by": how,
                       "time": datetime.datetime.now().isoformat(timespec="seconds"),
                       "note": "this evaluation stopped before it finished: predictions/ and figures/ hold only "
                               "the classes it completed and results.json was not written; an evaluation "
                               "cannot be resumed, run it again"}, os.path.join(run_dir, PARTIAL_NAME))
    logger.warning("evaluation stopped by %s before it finished; %s marks %s as partial", how, PARTIAL_NAME, run_dir)


def evaluate_fold(config: Dict, run_dir: str, logger) -> Dict:
    """`evaluate`'s work, inside its log."""
    device = resolve_device(config["device"])
    threads = configure_threads(config["num_threads"])
    indices = supp_indices(config)
    names = class_names(config["dataset"], config["test_classes"])
    # The data first: a wrong folder or image size fails before a model is built.
    dataset = make_test_dataset(config, indices[0])
    seed_everything(config["seed"])
    evaluated = load_model(config, device)
    model, loaded = evaluated.model, evaluated.loaded
    source, step = loaded.path, loaded.step
    for warning in evaluated.warnings:
        logger.warning("%s", warning)
    model.eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config["cudnn_benchmark"]
    options = InferenceOptions(predict_batch_size(model, device, config["eval_batch_size"]),
                               eval_channels_last(config["channels_last"], device), config["amp_bf16"])
    runner = GraphedPredict(model, log=logger) if config["eval_graphs"] else model
    logger.info("evaluating %s (step %s), model %s, on %s fold %d, support index(es) %s, on %s (%d CPU threads)",
                source, step, evaluated.name, config["dataset"], config["eval_fold"], indices, device, threads)
    leakage = check_leakage(config, loaded, dataset.fold_volumes, logger)
    timer, skips = Timer(), Skips()
    per_support = {}
    for supp_idx in indices:
        dataset.select_support(supp_idx)
        folder = run_dir if len(indices) == 1 else os.path.join(run_dir, f"supp_idx_{supp_idx}")
        classes, predicted = {}, {}
        bar = progress(total=slices_to_segment(dataset, config["test_classes"]),
                       desc=f"evaluating support index {supp_idx}", unit="slice")
        for class_id in config["test_classes"]:
            name = names[class_id]
            support, outcomes, queries = evaluate_class(runner, dataset, class_id, name, device, options,
                                                        timer, skips, logger, bar)
            classes[str(class_id)] = class_entry(name, support, outcomes)
            for outcome, query in zip(outcomes, queries):
                entry = predicted.setdefault(outcome.volume_index, {
                    "shape": query["volume_shape"], "geometry": query["geometry"],
                    "number": query["image_number"], "classes": []})
                entry["classes"].append((class_id, outcome))
            if config["save_predictions"]:
                write_predictions(folder, class_id, name, outcomes, queries)
            if config["save_figures"] and outcomes:
                title = (f"{config['dataset']} fold {config['eval_fold']}, class {class_id} ({name}); "
                         f"checkpoint {short_path(source)}" + (f", step {step}" if step else ""))
                write_class_figure(folder, title, class_id, name, support, outcomes, queries)
        bar.close()
        if config["save_predictions"]:
            write_combined_predictions(folder, predicted)
        per_support[str(supp_idx)] = {
            "support_volume": dataset.support_volume,
            "support_image": dataset.file_name(dataset.support_volume),
            "query_volumes": list(dataset.query_volumes),
            "query_images": [dataset.file_name(v) for v in dataset.query_volumes], "classes": classes}
    results = results_summary(config, indices, dataset, evaluated, leakage, per_support, skips, timer, device,
                              options, threads)
    write_results(run_dir, results)
    print(results_table(results))
    if results["mean_dice"] is None:
        raise NothingEvaluatedError(
            f"no test class could be evaluated ({len(skips.entries)} skip(s), first: class "
            f"{skips.entries[0]['class_id']}, {skips.entries[0]['what']}: {skips.entries[0]['reason']}); "
            f"{os.path.join(run_dir, 'results.json')} lists them")
    logger.info("results in %s (mean Dice %.4f over %s)", run_dir, results["mean_dice"],
                mean_coverage(results["classes"]))
    return results


def make_test_dataset(config: Dict, supp_idx: int) -> TestDataset:
    """The evaluated fold, from the run's options."""
    return TestDataset(config["data_dir"], dataset=config["dataset"], eval_fold=config["eval_fold"],
                       supp_idx=supp_idx, n_part=config["n_part"], n_volumes=config["n_volumes"],
                       test_classes=config["test_classes"], image_size=config["image_size"],
                       resample_in_plane=config["resample_in_plane"])


def slices_to_segment(dataset: TestDataset, class_ids) -> int:
    """How many query slices the evaluation of `class_ids` segments (the progress total)."""
    return sum(len(dataset.volume(v).slices_with(c)) for c in class_ids for v in dataset.query_volumes)


def class_entry(name: str, support: Optional[Dict], outcomes: List[QueryOutcome]) -> Dict:
    per_volume = [{"volume": o.volume_index, "image": o.image_name, "dice": o.dice, "iou": o.iou, "tp": o.tp,
                   "fp": o.fp, "fn": o.fn, "n_slices": len(o.slice_indices)} for o in outcomes]
    return {
        "name": name,
        "support_volume": support["volume_index"] if support else None,
        "support_image": support["image_name"] if support else None,
        "support_slices": [int(s) for s in support["slice_indices"]] if support else [],
        "dice_mean": float(np.mean([o.dice for o in outcomes])) if outcomes else None,
        "iou_mean": float(np.mean([o.iou for o in outcomes])) if outcomes else None,
        "per_volume": per_volume,
    }


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def results_summary(config: Dict, indices: List[int], dataset: TestDataset, evaluated: EvaluatedModel,
                    leakage: Dict, per_support: Dict, skips: Skips, timer: Timer, device: torch.device,
                    options: InferenceOptions, threads: int) -> Dict:
    """results.json: the protocol record, each support index's classes, and per class the
    mean over support indices (of the means over query volumes). Means over classes cover
    the classes with a score ("mean_classes"; None when none has one)."""
    classes = {}
    for class_id in map(str, config["test_classes"]):
        entries = [s["classes"][class_id] for s in per_support.values()]
        classes[class_id] = {
            "name": entries[0]["name"],
            "dice_mean": _mean([e["dice_mean"] for e in entries]),
            "iou_mean": _mean([e["iou_mean"] for e in entries]),
            "n_query_volumes": sum(len(e["per_volume"]) for e in entries),
        }
    for entry in per_support.values():
        entry["mean_dice"] = _mean([c["dice_mean"] for c in entry["classes"].values()])
        entry["mean_classes"] = scored_classes(entry["classes"])
    loaded = evaluated.loaded
    protocol = protocol_record(config, indices, loaded.path, loaded.step, loaded.config, loaded.training_data,
                               model=evaluated.name, model_options=evaluated.options)
    protocol["leakage"] = leakage
    protocol["data"] = evaluation_data_record(dataset)
    return {
        "protocol": protocol,
        "warnings": list(evaluated.warnings),   # about the checkpoint (a run that never finished)
        "skipped": skips.entries,
        "classes": classes,
        "mean_dice": _mean([c["dice_mean"] for c in classes.values()]),
        "mean_classes": scored_classes(classes),
        "mean_iou": _mean([c["iou_mean"] for c in classes.values()]),
        "supports": per_support,
        "fold_volumes": dataset.fold_volumes,
        "fold_images": [dataset.file_name(v) for v in dataset.fold_volumes],
        "data_dir": config["data_dir"],
        # Label files reoriented onto their image's grid, or used on it without geometry.
        "data_notes": [{"file": path, "note": note} for path, note in dataset.reader.notes],
        "evaluation": {"device": str(device), "num_threads": threads, "amp_bf16": config["amp_bf16"],
                       "channels_last": options.channels_last, "eval_batch_size": options.batch_size,
                       "eval_graphs": config["eval_graphs"], "cudnn_benchmark": config["cudnn_benchmark"]},
        "model_counters": model_counters(evaluated.model),
        "timing": {"forward_seconds": timer.seconds, "slices": timer.slices,
                   "slices_per_second": timer.slices / timer.seconds if timer.seconds else None},
    }
