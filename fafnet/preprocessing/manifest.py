"""The pre-processing manifest: which raw case every output volume came from, and how.

Each pre-processing CLI keeps `preprocessing_manifest.json` in its output folder:

    {"format": 1, "dataset": "SABS",
     "route": {"name": "ct_window_crop_resample", "parameters": {...}},
     "raw_dir": "/abs/raw", "project": {"commit": "...", "dirty": false},
     "volumes": [{"index": 0, "image": "image_0.nii.gz", "label": "label_0.nii.gz",
                  "case": "img0001",
                  "raw": {"image": [{"path": "img/img0001.nii.gz", "size": 123,
                                     "sha256": "..."}],
                          "label": [...]}}, ...]}

Raw paths are relative to the raw folder (with '/' separators), so a moved raw folder still
matches. A re-run compares the manifest it would write with the one on disk: a raw file
added, removed, changed (size or sha256) or moved to another output index, or another route
or parameters, makes the run refuse (naming the difference) unless it redoes everything.
The project's git commit (fafnet.io.provenance.code_version, as results record it) is
recorded for reference but not compared.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from fafnet.io.atomic import atomic_write_json
from fafnet.io.layout import PREPROCESSING_MANIFEST_NAME
from fafnet.io.provenance import code_version

MANIFEST_NAME = PREPROCESSING_MANIFEST_NAME
MANIFEST_FORMAT = 1
_MAX_LISTED = 5     # differences named in an error; the rest are counted
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Route:
    """A pre-processing route and the parameters that determine its output (JSON values)."""
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RawCase:
    """One source's raw case name and its raw files by role ("image", "label"); a DICOM
    series lists every slice file of its folder."""
    case: str
    files: Mapping[str, Sequence[str]]


def manifest_path(out_dir: str) -> str:
    return os.path.join(out_dir, MANIFEST_NAME)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str, raw_dir: str) -> Dict[str, Any]:
    """{"path": relative to raw_dir, "size": bytes, "sha256": hex digest} of a raw file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"raw file not found: {path}")
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(raw_dir))
    return {"path": relative.replace(os.sep, "/"), "size": os.path.getsize(path),
            "sha256": sha256_of(path)}


def _json_value(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def build_manifest(dataset: str, route: Route, raw_dir: str, cases: Sequence[RawCase],
                   output_names: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """The manifest of a run: case i is written to output_names[i] = (image, label)."""
    volumes = []
    for index, (case, (image_name, label_name)) in enumerate(zip(cases, output_names)):
        volumes.append({
            "index": index, "image": image_name, "label": label_name, "case": case.case,
            "raw": {role: [file_record(path, raw_dir) for path in paths]
                    for role, paths in case.files.items()},
        })
    return _json_value({
        "format": MANIFEST_FORMAT, "dataset": dataset,
        "route": {"name": route.name, "parameters": dict(route.parameters)},
        "raw_dir": os.path.abspath(raw_dir), "project": code_version(), "volumes": volumes,
    })


def read_manifest(out_dir: str) -> Optional[Dict[str, Any]]:
    """The manifest in `out_dir`, None if there is none; an unreadable one is an error."""
    path = manifest_path(out_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the pre-processing manifest {path} ({err}); re-run "
                         "with --overwrite to redo every volume") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("volumes"), list):
        raise ValueError(f"{path} is not a pre-processing manifest; re-run with --overwrite "
                         "to redo every volume")
    return manifest


def write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> str:
    path = manifest_path(out_dir)
    atomic_write_json(manifest, path)
    return path


def _files_by_path(volumes: Sequence[Mapping]) -> Dict[str, Mapping]:
    return {record["path"]: record for volume in volumes
            for records in volume.get("raw", {}).values() for record in records}


def _placement(volumes: Sequence[Mapping]) -> List[List]:
    """Per output index, its (role, raw path) list: what a reordering changes."""
    return [sorted((role, record["path"]) for role, records in volume.get("raw", {}).items()
                   for record in records) for volume in volumes]


def raw_differences(old: Sequence[Mapping], new: Sequence[Mapping]) -> List[str]:
    """What changed in the raw folder between two manifests' volume lists, in words."""
    old_files, new_files = _files_by_path(old), _files_by_path(new)
    differences = [f"raw file added: {p}" for p in sorted(new_files.keys() - old_files.keys())]
    differences += [f"raw file removed: {p}" for p in sorted(old_files.keys() - new_files.keys())]
    for path in sorted(old_files.keys() & new_files.keys()):
        before, after = old_files[path], new_files[path]
        if before.get("size") != after.get("size"):
            differences.append(f"raw file changed: {path} ({before.get('size')} -> "
                               f"{after.get('size')} bytes)")
        elif before.get("sha256") != after.get("sha256"):
            differences.append(f"raw file changed: {path} (same size, different sha256)")
    if not differences:  # same files: did any move to another output index?
        old_placement, new_placement = _placement(old), _placement(new)
        for index, (before, after) in enumerate(zip(old_placement, new_placement)):
            if before != after:
                differences.append(f"volume {index} came from {[p for _, p in before]}, now "
                                   f"from {[p for _, p in after]}")
    return differences


def manifest_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """Every difference between two manifests that makes existing outputs stale."""
    differences = []
    for key in ("format", "dataset"):
        if old.get(key) != new.get(key):
            differences.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_route, new_route = old.get("route") or {}, new.get("route") or {}
    if old_route.get("name") != new_route.get("name"):
        differences.append(f"route {old_route.get('name')!r} -> {new_route.get('name')!r}")
    old_params, new_params = old_route.get("parameters") or {}, new_route.get("parameters") or {}
    for key in sorted(old_params.keys() | new_params.keys()):
        if old_params.get(key) != new_params.get(key):
            differences.append(f"route parameter {key}: {old_params.get(key, '(unset)')!r} -> "
                               f"{new_params.get(key, '(unset)')!r}")
    return differences + raw_differences(old.get("volumes", []), new.get("volumes", []))


def summarise(differences: Sequence[str]) -> str:
    listed = "; ".join(differences[:_MAX_LISTED])
    more = len(differences) - _MAX_LISTED
    return listed + (f"; and {more} more difference(s)" if more > 0 else "")


def check_manifest(out_dir: str, new: Mapping[str, Any], existing_outputs: Sequence[str]) -> None:
    """Refuse to add to `out_dir` when its outputs may come from other raw files or another
    route: the manifest on disk differs from `new`, or outputs exist without a manifest.
    Without outputs there is nothing to be stale, so any manifest is simply replaced."""
    if not existing_outputs:
        return
    old = read_manifest(out_dir)
    remedy = "re-run with --overwrite to redo every volume, or choose another --out-dir"
    if old is None:
        raise ValueError(f"{out_dir} holds pre-processed volumes ({existing_outputs[0]}"
                         + (f" and {len(existing_outputs) - 1} more" if len(existing_outputs) > 1
                            else "")
                         + f") but no {MANIFEST_NAME} recording their raw files; {remedy}")
    differences = manifest_differences(old, new)
    if differences:
        raise ValueError(f"the raw folder or the pre-processing settings changed since "
                         f"{manifest_path(out_dir)} was written: {summarise(differences)}; "
                         f"{remedy}")
