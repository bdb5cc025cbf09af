"""What a training run trained on, and the two checks that need it.

The record (`training_data_record`) holds the dataset, the held-out fold, the training
volumes (their indices i of image_<i>.nii.gz and the image file names) and every file
training reads with its size and sha256, plus the pre-processing route from the manifest
beside the data. train.py writes it into every snapshot and into
``<run>/data_manifest.json``.

- Resume (`resume_data_differences`): a snapshot continues only on the files it trained on;
  another file set or another hash is an error naming the first differing files, unless
  `resume_other_data=True` (recorded in the resumed run's data_manifest.json).
- Evaluation (`leakage_record`): a checkpoint whose training volumes are volumes of the
  evaluated fold measures its own training data; test.py refuses it unless
  `allow_leakage=True` (recorded in results.json). A snapshot or release checkpoint without
  the record is evaluated with a warning that this could not be checked (recorded too).

An evaluation records what it ran on as well (`evaluation_data_record`, results.json's
protocol["data"]): the sha256 of every label file of the dataset folder, so that the fold
table and `utils.py compare` refuse runs on other data (a relabelled copy of the folder whose
manifest is unchanged) instead of joining them.
"""
import hashlib
import os
from typing import Dict, List, Mapping, Optional, Sequence

from fafnet.preprocessing.manifest import sha256_of
from fafnet.io.provenance import preprocessing_record

DATA_MANIFEST_NAME = "data_manifest.json"
RECORD_FORMAT = 1
_LISTED = 3     # differing files named in an error; the rest are counted

# leakage_record()["status"]
CLEAN, OVERLAP, UNCHECKED, NOT_APPLICABLE = "clean", "overlap", "unchecked", "not applicable"


def _relative_name(path: str, data_dir: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(data_dir)).replace(os.sep, "/")


def training_data_record(dataset, dataset_name: str, data_dir: str) -> Dict:
    """The record of a TrainDataset (see the module docstring). Hashes stream every file
    once in 1 MiB chunks (about 1 s per GB)."""
    files = dataset.source_files()
    return {
        "format": RECORD_FORMAT,
        "dataset": dataset_name,
        "eval_fold": int(dataset.eval_fold),
        "n_volumes": int(dataset.n_volumes),
        "volume_indices": [int(i) for i in dataset.volume_indices],
        "image_files": [volume.files.name for volume in dataset.volumes],
        "files": [{"name": _relative_name(path, data_dir), "size": os.path.getsize(path),
                   "sha256": sha256_of(path)} for path in files],
        "preprocessing": preprocessing_record(data_dir),
    }


EVALUATION_DATA_FORMAT = 1


def evaluation_data_record(dataset) -> Dict:
    """The data identity of an evaluation on `dataset` (a TestDataset): the name and sha256
    of every label file of its folder, the evaluated fold's among them (all folds, so that the
    runs of the folds of one fold table share one identity: results.json's fold_images name
    the fold's), and one digest of them all."""
    labels = [{"name": os.path.basename(v.label), "sha256": sha256_of(v.label)}
              for v in dataset.layout.volumes if v.label]
    digest = hashlib.sha256("".join(f"{e['name']} {e['sha256']}\n" for e in labels).encode("utf-8"))
    return {"format": EVALUATION_DATA_FORMAT, "what": "sha256 of every label file of the dataset folder",
            "labels": labels, "digest": digest.hexdigest()}


# ----------------------------------------------------------------------------- resume


def resume_data_differences(saved: Mapping, now: Mapping) -> List[str]:
    """How the files of `now` differ from those a snapshot trained on (`saved`), as short
    phrases, first differences first; empty when the file sets and hashes agree."""
    before = {f["name"]: f["sha256"] for f in saved.get("files", [])}
    after = {f["name"]: f["sha256"] for f in now.get("files", [])}
    differences = [f"{name} has another sha256 (snapshot {before[name][:12]}... vs now {after[name][:12]}...)"
                   for name in after if name in before and before[name] != after[name]]
    differences += [f"{name} was not in the snapshot's training data" for name in after if name not in before]
    differences += [f"{name} of the snapshot's training data is not read now" for name in before
                    if name not in after]
    return differences


def describe_differences(differences: Sequence[str]) -> str:
    """The first few differences in one line, the rest counted."""
    shown = "; ".join(differences[:_LISTED])
    return shown + (f"; and {len(differences) - _LISTED} more" if len(differences) > _LISTED else "")


# ----------------------------------------------------------------------------- leakage


def leakage_record(training_data: Optional[Mapping], training_config: Optional[Mapping], dataset: str,
                   eval_fold: int, fold_volumes: Sequence[int], untrained: bool = False) -> Dict:
    """Whether the checkpoint's training volumes and the evaluated fold's volumes overlap:
    {"status": clean | overlap | unchecked | not applicable, "training_volumes",
    "evaluated_volumes", "overlap", "reason"}."""
    record = {"status": UNCHECKED, "training_fold": None, "training_volumes": None,
              "evaluated_fold": int(eval_fold), "evaluated_volumes": [int(v) for v in fold_volumes],
              "overlap": [], "reason": ""}
    if untrained:
        return {**record, "status": NOT_APPLICABLE, "reason": "untrained weights"}
    if training_data is None:
        return {**record, "reason": _unchecked_reason(training_config, eval_fold)}
    record.update(training_fold=training_data.get("eval_fold"),
                  training_volumes=list(training_data.get("volume_indices", [])))
    if training_data.get("dataset") != dataset:
        return {**record, "status": NOT_APPLICABLE,
                "reason": f"trained on {training_data.get('dataset')}, evaluated on {dataset}"}
    overlap = sorted(set(record["training_volumes"]) & set(record["evaluated_volumes"]))
    if not overlap:
        return {**record, "status": CLEAN}
    names = dict(zip(training_data.get("volume_indices", []), training_data.get("image_files", [])))
    listed = ", ".join(f"{v} ({names[v]})" if v in names else str(v) for v in overlap)
    return {**record, "status": OVERLAP, "overlap": overlap,
            "reason": f"trained on fold {training_data.get('eval_fold')}'s training volumes, which include "
                      f"volume(s) {listed} of evaluated fold {eval_fold}"}


def _unchecked_reason(training_config: Optional[Mapping], eval_fold: int) -> str:
    if training_config is None:
        return ("the checkpoint records no training volumes (a release checkpoint or a plain state "
                "dict); use the one trained for this fold")
    trained_fold = training_config.get("eval_fold")
    caution = (f"; its config says eval_fold={trained_fold}, so its training volumes likely include "
               f"this fold's" if trained_fold is not None and trained_fold != eval_fold else "")
    return f"the snapshot was written before training volumes were recorded{caution}"
