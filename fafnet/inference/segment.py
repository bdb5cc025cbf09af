"""Segmenting new scans with a trained checkpoint (docs/protocol.md section 18): read and
pre-process the support and the queries as the checkpoint's training data was, pair query
and support slices (the evaluation's chunks over a range, or by relative position), predict,
and put each label map back on its query's grid. `run(request)` does it all; `request` holds
the options of `fafnet.cli.segment` (an argparse.Namespace or any object with those
attributes). Nothing is written until every query has been segmented.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fafnet.io.atomic import atomic_write_bytes, atomic_write_json
from fafnet.io.nifti import Geometry, nifti_bytes
from fafnet.preprocessing.common import DEFAULT_MR_ARITHMETIC, MR_ARITHMETIC, smallest_label_dtype
from fafnet.io.progress import progress
from fafnet.io.resample import resample_onto, slice_positions_on
from fafnet.preprocessing.routes import (Preprocessing, apply_route, check_route_output, choose_preprocessing,
                         scan_warnings)
from fafnet.io.scans import Scan, read_scan, scan_name
from fafnet.datasets.specs import DatasetSpec, get_dataset_spec
from fafnet.episodes.evaluation import slices_containing, support_slice_positions
from fafnet.episodes.volumes import VolumeReader, load_labels, present_values, to_network_images
from fafnet.runtime.devices import eval_channels_last, resolve_device
from fafnet.evaluation.figures import PREDICTION_COLOUR, SUPPORT_COLOUR, TRUTH_COLOUR, Tile, tiles_figure_png
from fafnet.evaluation.predict import InferenceOptions, predict_runs
from fafnet.evaluation.metrics import dice_score
from fafnet.inference.pairing import (Pairing, combine_labels, largest_component, range_pairing, relative_pairing,
                                slices_in_range)
from fafnet.io.provenance import code_version, preprocessing_record
from fafnet.runtime.checkpoints import checkpoint_model, load_checkpoint_state, read_checkpoint
from fafnet.runtime.snapshots import saved_training_config, snapshot_model_name
from fafnet.models import build_model, predict_batch_size

RANGE_SYNTAX = "[QUERY:][LABEL=]Z0:Z1"
# A label predicted more than this factor larger or smaller (in mL) than its volume in the
# support mask gets a warning: one organ's volume varies less than that between adults (a
# liver 1-2.5 L, a kidney 0.1-0.3 L), so such a prediction is likely wrong (an organ found in
# a neighbour, bright structures taken for it, or missed). Labels segmented over a
# --query-range are not checked: the range may hold part of the organ.
VOLUME_WARNING_FACTOR = 3.0
log = logging.getLogger("fafnet.segment")


@dataclass(frozen=True)
class RangeSpec:
    """One --query-range: which query (None: all), which label (None: all), the bounds (None:
    the scan's first or last slice)."""
    text: str
    query: Optional[int]
    label: Optional[int]
    z0: Optional[int]
    z1: Optional[int]

    @property
    def specificity(self) -> int:
        return 2 * (self.query is not None) + (self.label is not None)


def _syntax_error(text: str) -> ValueError:
    return ValueError(f"--query-range {text!r}: expected {RANGE_SYNTAX} with non-negative integers (0-based "
                      "slice indices, Z1 excluded; e.g. 12:30, 1=12:30, 0:1=12:30)")


def _number(part: Optional[str], text: str, optional: bool = False) -> Optional[int]:
    if part is None or (optional and part == ""):
        return None
    if not part.isdigit():
        raise _syntax_error(text)
    return int(part)


def parse_range(text: str) -> RangeSpec:
    """A --query-range value (RANGE_SYNTAX; see the epilog)."""
    selector, equals, bounds = text.rpartition("=")
    ends = bounds.split(":")
    if equals:                                   # [QUERY:]LABEL=Z0:Z1
        parts = selector.split(":")
        if len(parts) > 2:
            raise _syntax_error(text)
        query, label = (parts[0] if len(parts) == 2 else None), parts[-1]
    else:                                        # [QUERY:]Z0:Z1
        query, label = (ends.pop(0) if len(ends) == 3 else None), None
    if len(ends) != 2:
        raise _syntax_error(text)
    z0, z1 = _number(ends[0], text, optional=True), _number(ends[1], text, optional=True)
    if z0 is not None and z1 is not None and z1 <= z0:
        raise ValueError(f"--query-range {text!r}: Z1 ({z1}) must be greater than Z0 ({z0})")
    return RangeSpec(text, _number(query, text), _number(label, text), z0, z1)


def check_ranges(specs: Sequence[RangeSpec], n_queries: int, labels: Sequence[int]) -> None:
    """Each range names an existing query and a label being segmented, and none is given twice."""
    seen = {}
    for spec in specs:
        if spec.query is not None and spec.query >= n_queries:
            raise ValueError(f"--query-range {spec.text!r}: query {spec.query} does not exist (--query gives "
                             f"{n_queries}, numbered from 0)")
        if spec.label is not None and spec.label not in labels:
            raise ValueError(f"--query-range {spec.text!r}: label {spec.label} is not segmented (labels: "
                             f"{', '.join(map(str, labels))})")
        key = (spec.query, spec.label)
        if key in seen:
            raise ValueError(f"--query-range {seen[key]!r} and {spec.text!r} give the same query and label twice")
        seen[key] = spec.text


def range_for(specs: Sequence[RangeSpec], query: int, label: int) -> Optional[RangeSpec]:
    """The most specific range for (query, label) (check_ranges rules out ties)."""
    matching = [s for s in specs if s.query in (None, query) and s.label in (None, label)]
    return max(matching, key=lambda s: s.specificity) if matching else None


def check_outputs(args) -> None:
    """Cheap checks before any reading: one reference per query, distinct output names."""
    if args.reference is not None and len(args.reference) != len(args.query):
        raise ValueError(f"--reference gives {len(args.reference)} file(s) for {len(args.query)} --query scan(s); "
                         "give one per query, in the same order")
    names = {}
    for path in args.query:
        name = scan_name(path)
        if name in names:
            raise ValueError(f"--query {names[name]} and {path} would both write {name}_labels.nii.gz; "
                             "rename one of them")
        names[name] = path
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; give a folder")


# ----------------------------------------------------------------------------- checkpoint


@dataclass
class Checkpoint:
    """A project snapshot and what its training run says about the data it saw."""
    path: str
    state: Dict
    step: Optional[int]
    spec: DatasetSpec
    image_size: Tuple[int, int]
    resample_in_plane: Optional[Tuple[int, int]]
    data_dir: Optional[str]

    model_name: str                      # the registry name of the model the snapshot holds
    model_options: Dict                  # every option of that model
    warnings: List[str] = field(default_factory=list)   # about the checkpoint (a run that never finished)

    def record(self) -> Dict:
        return {"path": self.path, "step": self.step, "model": self.model_name, "model_options": self.model_options,
                "dataset": self.spec.name, "image_size": list(self.image_size),
                "resample_in_plane": list(self.resample_in_plane) if self.resample_in_plane else None,
                "training_data_dir": self.data_dir, "warnings": list(self.warnings)}


def read_training_checkpoint(name: str) -> Checkpoint:
    path, state = read_checkpoint(name, "--checkpoint")
    config = saved_training_config(path, state, "--checkpoint")
    try:
        spec = get_dataset_spec(config["dataset"])
    except KeyError as err:
        raise ValueError(f"--checkpoint {path}: {err.args[0]}") from None
    resampled = config.get("resample_in_plane")
    model_name = snapshot_model_name(state)
    model_name, model_options = checkpoint_model(path, state, model_name, {}, "--checkpoint")
    from fafnet.runtime.checkpoints import unfinished_run_warning
    unfinished = unfinished_run_warning(path, state)   # latest.pth of a run that never finished
    if unfinished:
        log.warning("warning: %s", unfinished)
    return Checkpoint(path, state, state.get("step"), spec, tuple(state["image_size"]),
                      tuple(resampled) if resampled else None, config.get("data_dir"), model_name, model_options,
                      [unfinished] if unfinished else [])


def training_arithmetic(checkpoint: Checkpoint, asked: Optional[str], warnings: List[str]) -> Tuple[str, str]:
    """(the MRI routes' arithmetic, where it comes from): --arithmetic, else the manifest of
    the training data when its folder is here, else the project's default."""
    if asked:
        return asked, "--arithmetic"
    try:
        record = preprocessing_record(checkpoint.data_dir) if checkpoint.data_dir else None
    except ValueError as err:
        warnings.append(f"the training data's manifest could not be read ({err}); "
                        f"{DEFAULT_MR_ARITHMETIC} arithmetic used")
        record = None
    arithmetic = ((record or {}).get("parameters") or {}).get("arithmetic")
    if arithmetic in MR_ARITHMETIC:
        return arithmetic, f"the training data's manifest in {checkpoint.data_dir}"
    return DEFAULT_MR_ARITHMETIC, "the default (the training data's manifest is not here)"


def load_model(checkpoint: Checkpoint, device: torch.device, channels_last: bool):
    """The checkpoint's model, built with its own options, its weights loaded."""
    model = build_model(checkpoint.model_name, checkpoint.image_size, device=device,
                        channels_last=channels_last, options=checkpoint.model_options)
    load_checkpoint_state(model, checkpoint.path, checkpoint.state, checkpoint.image_size, checkpoint.model_name)
    return model.eval()


# ----------------------------------------------------------------------------- scans


@dataclass
class PreparedScan:
    """A scan as read and on the network's grid.

    scan: as read (original array, geometry). image: float32 [Z, H, W] z-scored, on the
    network's grid `geometry`. labels: the support's label map on that grid (None for queries).
    positions: [Z] each network slice's continuous slice index on the original grid.
    inside: the network slices whose centre lies on one of the scan's own slices.
    """
    scan: Scan
    preprocessing: Preprocessing
    image: np.ndarray
    geometry: Geometry
    labels: Optional[np.ndarray]
    positions: np.ndarray
    inside: List[int]
    warnings: List[str] = field(default_factory=list)

    def original_slice(self, network_slice: int) -> int:
        return int(np.floor(self.positions[network_slice] + 0.5))


@dataclass
class Context:
    """What every scan is prepared with."""
    checkpoint: Checkpoint
    reader: VolumeReader
    requested: str                 # --preprocess
    arithmetic: str                # the MRI routes' arithmetic ...
    arithmetic_source: str         # ... and where it comes from


def prepare_scan(scan: Scan, context: Context, label: Optional[np.ndarray] = None) -> PreparedScan:
    """Pre-process (route or none), check the grid, resample in-plane and z-score a scan (and
    the support's label map)."""
    checkpoint, spec = context.checkpoint, context.checkpoint.spec
    row_flip = scan.kind == "dicom"
    choice = choose_preprocessing(context.requested, spec, scan.array, scan.geometry, context.arithmetic, row_flip)
    warnings = [f"{scan.path}: {line}" for line in
                scan_warnings(spec, scan.array, scan.geometry, choice.applied, scan.modality)]
    if choice.applied == "route":
        volume = apply_route(spec.name, scan.array, scan.geometry, label, context.arithmetic, row_flip, scan.path)
        image, geometry, label = volume.image, volume.geometry, volume.label
    else:
        image, geometry = scan.array.astype(np.float32), scan.geometry
    check_route_output(spec.name, image.shape, checkpoint.image_size, checkpoint.resample_in_plane, scan.path,
                       checkpoint.path, choice.applied)
    image, geometry, (label,) = context.reader.to_network_grid(image, geometry, scan.path, label)
    positions = slice_positions_on(geometry, image.shape, scan.geometry)
    inside = slices_in_range(positions, 0, scan.array.shape[0])
    if not inside:
        raise ValueError(f"{scan.path}: no slice of the pre-processed scan lies within its own slices")
    return PreparedScan(scan, choice, image, geometry, label, positions, inside, warnings)


def select_labels(mask: np.ndarray, asked: Optional[Sequence[int]], path: str) -> List[int]:
    present = [v for v in present_values(mask) if v != 0]
    if not present:
        raise ValueError(f"--support-mask {path} holds no label (every voxel is 0)")
    for label in asked or ():
        if label not in present:
            raise ValueError(f"--label {label} does not occur in --support-mask {path} (labels present: "
                             f"{', '.join(map(str, present))})")
    return sorted(set(asked)) if asked else present


@dataclass
class Support:
    prepared: PreparedScan
    mask: np.ndarray          # the label map as read, on the support's own grid
    mask_path: str
    labels: List[int]
    notes: List[str]


def prepare_support(args, context: Context) -> Support:
    scan = read_scan(args.support_image, "--support-image")
    notes: List[Tuple[str, str]] = []
    mask = load_labels(args.support_mask, scan.array.shape, scan.path, like_geometry=scan.geometry, notes=notes)
    labels = select_labels(mask, args.label, args.support_mask)
    mask = np.where(np.isin(mask, labels), mask, 0).astype(mask.dtype)
    prepared = prepare_scan(scan, context, mask)
    for label in labels:
        if not slices_containing(prepared.labels, label):
            raise ValueError(f"label {label} of --support-mask {args.support_mask} has no voxel left after "
                             f"pre-processing (slice spacing {prepared.geometry.spacing[2]:.3g} mm)")
    return Support(prepared, mask, args.support_mask, labels, [f"{path}: {note}" for path, note in notes])


@dataclass
class Query:
    prepared: PreparedScan
    index: int
    reference: Optional[np.ndarray]
    reference_path: Optional[str]
    plans: Dict[int, "LabelPlan"] = field(default_factory=dict)


@dataclass
class LabelPlan:
    label: int
    pairing: Pairing
    query_range: Optional[Tuple[int, int]]
    range_text: Optional[str]
    clean: bool
    warnings: List[str]


def resolve_bounds(spec: RangeSpec, scan: Scan) -> Tuple[int, int]:
    n = scan.array.shape[0]
    z0, z1 = spec.z0 or 0, n if spec.z1 is None else spec.z1
    if not 0 <= z0 < z1 <= n:
        raise ValueError(f"--query-range {spec.text!r}: {scan.path} has {n} slices (0..{n - 1}), so Z0:Z1 must "
                         f"satisfy 0 <= Z0 < Z1 <= {n}")
    return z0, z1


def plan_label(support: Support, query: PreparedScan, label: int, spec: Optional[RangeSpec],
               largest: str) -> LabelPlan:
    """The pairing of one label for one query (fafnet/inference/pairing.py)."""
    with_label = slices_containing(support.prepared.labels, label)
    warnings = []
    if spec is None:
        extent = (support.prepared.inside[0], support.prepared.inside[-1] + 1)
        pairing, bounds = relative_pairing(with_label, extent, query.inside), None
    else:
        bounds = resolve_bounds(spec, query.scan)
        slices = slices_in_range(query.positions, *bounds)
        if not slices:
            raise ValueError(f"--query-range {spec.text!r}: no slice of the pre-processed {query.scan.path} lies on "
                             f"its slices {bounds[0]}:{bounds[1]} (pre-processed slice spacing "
                             f"{query.geometry.spacing[2]:.3g} mm)")
        pairing = range_pairing(with_label, slices)
        empty = [part for part, start, end in pairing.runs if end <= start]
        if empty:
            warnings.append(f"label {label}: {len(slices)} slice(s) in --query-range {spec.text!r} leave chunk(s) "
                            f"{empty} empty (3 chunks), so support slice(s) {empty} segment nothing")
    clean = largest == "on" or (largest == "auto" and spec is None)
    return LabelPlan(label, pairing, bounds, spec.text if spec else None, clean, warnings)


def prepare_query(index: int, path: str, args, context: Context, support: Support,
                  ranges: Sequence[RangeSpec]) -> Query:
    prepared = prepare_scan(read_scan(path, "--query"), context)
    reference = reference_path = None
    if args.reference:
        reference_path = args.reference[index]
        reference = load_labels(reference_path, prepared.scan.array.shape, path,
                                like_geometry=prepared.scan.geometry)
    query = Query(prepared, index, reference, reference_path)
    for label in support.labels:
        query.plans[label] = plan_label(support, prepared, label, range_for(ranges, index, label),
                                        args.largest_component)
    return query


# ----------------------------------------------------------------------------- segmentation


@dataclass
class LabelResult:
    probability: np.ndarray     # float32 [Z, H, W] on the network grid (0 where not segmented)
    mask: np.ndarray            # bool, after the cleaning
    removed: int                # voxels the cleaning removed (network grid)


def segment_label(model, support: Support, query: Query, plan: LabelPlan, device: torch.device,
                  options: InferenceOptions, bar) -> LabelResult:
    """One label of one query on the network grid (fafnet.evaluation.predict.predict_runs)."""
    pairing, sup = plan.pairing, support.prepared
    support_images = to_network_images(sup.image[pairing.support_slices])
    support_masks = torch.from_numpy((sup.labels[pairing.support_slices] == plan.label).astype(np.float32))
    query_images = to_network_images(query.prepared.image[pairing.query_slices])
    foreground = predict_runs(model, support_images, support_masks, query_images, pairing.runs, device, options,
                              bar=bar)
    probability = np.zeros(query.prepared.image.shape, dtype=np.float32)
    probability[pairing.query_slices] = foreground
    mask, removed = probability > 0.5, 0
    if plan.clean:
        mask, removed = largest_component(mask)
    return LabelResult(probability, mask, removed)


@dataclass
class QueryResult:
    query: Query
    labels: Dict[int, LabelResult]
    label_map: np.ndarray                 # on the query's own grid
    probabilities: Dict[int, np.ndarray]  # on the query's own grid (--probabilities)
    dice: Dict[int, float]                # per label, on the query's own grid (--reference)

    def volume_ml(self, label: int) -> float:
        """Voxels of `label` in the label map x the volume of one voxel of the query's grid."""
        voxel_ml = float(np.prod(self.query.prepared.scan.geometry.spacing)) / 1000.0
        return int(np.count_nonzero(self.label_map == label)) * voxel_ml


def segment(model, support: Support, query: Query, device: torch.device, options: InferenceOptions,
            with_probabilities: bool) -> QueryResult:
    """Every label of one query, combined into one label map and brought back onto the
    query's own grid (labels nearest, probabilities linear)."""
    prepared, labels = query.prepared, support.labels
    total = sum(len(query.plans[label].pairing.query_slices) for label in labels)
    with progress(total=total, desc=f"segmenting {prepared.scan.name}", unit="slice") as bar:
        results = {label: segment_label(model, support, query, query.plans[label], device, options, bar)
                   for label in labels}
    combined = combine_labels(labels, [results[lb].mask for lb in labels],
                              [results[lb].probability for lb in labels], smallest_label_dtype(max(labels)))
    original = prepared.scan
    label_map = resample_onto(combined, prepared.geometry, original.geometry, original.array.shape, "nearest")
    probabilities = {label: resample_onto(results[label].probability, prepared.geometry, original.geometry,
                                          original.array.shape, "linear")
                     for label in labels} if with_probabilities else {}
    dice = {label: dice_score(label_map == label, query.reference == label)
            for label in labels} if query.reference is not None else {}
    return QueryResult(query, results, label_map, probabilities, dice)


# ----------------------------------------------------------------------------- outputs


def label_record(result: QueryResult, support: Support, label: int) -> Dict:
    """One label's entry in <name>.json."""
    query, plan = result.query.prepared, result.query.plans[label]
    pairing = plan.pairing
    record = {
        "voxels": int(np.count_nonzero(result.label_map == label)), "volume_ml": result.volume_ml(label),
        "slices": slices_containing(result.label_map, label),
        "pairing": pairing.mode, "query_range": list(plan.query_range) if plan.query_range else None,
        "query_range_option": plan.range_text,
        "support_slices": [support.prepared.original_slice(s) for s in pairing.support_slices],
        "support_slices_network": list(pairing.support_slices),
        "runs": [{"support_slice": support.prepared.original_slice(pairing.support_slices[position]),
                  "query_slices": [query.original_slice(pairing.query_slices[start]),
                                   query.original_slice(pairing.query_slices[end - 1])]}
                 for position, start, end in pairing.runs if end > start],
        "largest_component": plan.clean, "voxels_removed_by_cleaning": result.labels[label].removed,
    }
    if label in result.dice:
        record["dice"] = result.dice[label]
    return record


def grid_record(prepared: PreparedScan) -> Dict:
    return {"shape_zyx": list(prepared.image.shape), "spacing_xyz": list(prepared.geometry.spacing),
            "slices_inside_scan": len(prepared.inside)}


def query_record(result: QueryResult, support: Support, context: Context, options: InferenceOptions,
                 device: torch.device, files: Dict, warnings: List[str]) -> Dict:
    """<name>.json (docs/segmenting.md)."""
    prepared, labels = result.query.prepared, support.labels
    checkpoint = context.checkpoint
    return {
        "query": prepared.scan.path, "read_as": prepared.scan.kind, "dicom_modality": prepared.scan.modality,
        "shape_zyx": list(prepared.scan.array.shape), "spacing_xyz": list(prepared.scan.geometry.spacing),
        "reference": result.query.reference_path,
        "checkpoint": checkpoint.record(),
        "support": {"image": support.prepared.scan.path, "mask": support.mask_path,
                    "read_as": support.prepared.scan.kind, "notes": support.notes,
                    "preprocessing": support.prepared.preprocessing.record(),
                    "network_grid": grid_record(support.prepared)},
        "preprocessing": {"query": prepared.preprocessing.record(),
                          "arithmetic": {"value": context.arithmetic, "from": context.arithmetic_source,
                                         "applies_to": "the MRI routes (CHAOST2, CMR, Prostate_MRI)"},
                          "resample_in_plane": list(checkpoint.resample_in_plane) if checkpoint.resample_in_plane
                          else None,
                          "zscore": "per volume, over the pre-processed (and resampled) scan",
                          "network_grid": grid_record(prepared)},
        "labels": {str(label): label_record(result, support, label) for label in labels},
        "overlaps": "where labels overlap, the label with the highest foreground probability is written",
        "outputs": files,
        "inference": {"device": str(device), "batch_size": options.batch_size,
                      "channels_last": options.channels_last, "amp_bf16": options.amp_bf16},
        "warnings": warnings,
        "code": code_version(),
    }


def three_slices(slices: Sequence[int]) -> List[int]:
    """At most three of `slices`, at 1/6, 1/2 and 5/6 of the way through."""
    return sorted({slices[p] for p in support_slice_positions(len(slices))}) if slices else []


def overview_png(result: QueryResult, support: Support, context: Context) -> bytes:
    """One row per label: the support slice (its middle support slice) with the mask, then up
    to three query slices covered by the label with the prediction (and the reference)."""
    query, sup = result.query.prepared, support.prepared
    rows = []
    for label in support.labels:
        middle = middle_support_slice(result, support, label)
        row = [Tile(sup.scan.array[middle], [(support.mask[middle] == label, SUPPORT_COLOUR)],
                    f"support {sup.scan.name} z{middle}\nlabel {label}", _aspect(sup.scan.geometry))]
        covered = slices_containing(result.label_map, label)
        for z in three_slices(covered) or [query.scan.array.shape[0] // 2]:
            row.append(query_tile(result, label, z, bool(covered)))
        rows.append(row)
    checkpoint = context.checkpoint
    title = (f"{query.scan.name}: {checkpoint.spec.name} checkpoint {os.path.basename(checkpoint.path)}"
             + (f", step {checkpoint.step}" if checkpoint.step is not None else ""))
    legend = [(SUPPORT_COLOUR, "support mask"), (PREDICTION_COLOUR, "prediction")]
    if result.query.reference is not None:
        legend.insert(1, (TRUTH_COLOUR, "reference"))
    return tiles_figure_png(title, rows, legend)


def middle_support_slice(result: QueryResult, support: Support, label: int) -> int:
    """The original index of the middle support slice this label used."""
    used = result.query.plans[label].pairing.support_slices
    return support.prepared.original_slice(used[len(used) // 2])


def query_tile(result: QueryResult, label: int, z: int, found: bool) -> Tile:
    query, reference = result.query.prepared, result.query.reference
    predicted = result.label_map[z] == label
    masks = [(predicted, PREDICTION_COLOUR)]
    caption = f"{query.scan.name} z{z}: label {label}" + ("" if found else " not found")
    if reference is not None:
        masks.insert(0, (reference[z] == label, TRUTH_COLOUR))
        caption += f"\nslice Dice {dice_score(predicted, reference[z] == label):.2f}"
    return Tile(query.scan.array[z], masks, caption, _aspect(query.scan.geometry))


def _aspect(geometry: Geometry) -> float:
    return float(geometry.spacing[1] / geometry.spacing[0])


def query_files(result: QueryResult, support: Support, context: Context, options: InferenceOptions,
                device: torch.device, out_dir: str, warnings: List[str]) -> List[Tuple[str, bytes]]:
    """(path, bytes) of every output of one query, made in memory."""
    name, geometry = result.query.prepared.scan.name, result.query.prepared.scan.geometry
    files = {"labels": f"{name}_labels.nii.gz", "overview": f"{name}_overview.png",
             "probabilities": {str(label): f"{name}_prob_label{label}.nii.gz" for label in result.probabilities}}
    outputs = [(files["labels"], nifti_bytes(result.label_map, geometry))]
    outputs += [(files["probabilities"][str(label)], nifti_bytes(p.astype(np.float32), geometry))
                for label, p in result.probabilities.items()]
    outputs.append((files["overview"], overview_png(result, support, context)))
    record = query_record(result, support, context, options, device, files, warnings)
    outputs = [(os.path.join(out_dir, file), data) for file, data in outputs]
    return outputs + [(os.path.join(out_dir, f"{name}.json"), record)]


def write_outputs(outputs: Sequence[Tuple[str, object]]) -> None:
    """Every file atomically (JSON records as JSON)."""
    for path, data in outputs:
        if isinstance(data, dict):
            atomic_write_json(data, path)
        else:
            atomic_write_bytes(data, path)


def inference_options(args, device: torch.device, model) -> InferenceOptions:
    """--batch-size (default: the model's own for the device), --channels-last (default: on for
    a CPU), --amp-bf16."""
    return InferenceOptions(predict_batch_size(model, device, args.batch_size),
                            eval_channels_last(args.channels_last, device), bool(args.amp_bf16))


def support_volume_ml(support: Support, label: int) -> float:
    """The volume (mL) of `label` in the support mask, on the support's own grid."""
    voxel_ml = float(np.prod(support.prepared.scan.geometry.spacing)) / 1000.0
    return int(np.count_nonzero(support.mask == label)) * voxel_ml


def volume_warnings(result: QueryResult, support: Support) -> List[str]:
    """One line per label (segmented without a range) whose predicted volume differs from
    the support mask's by more than VOLUME_WARNING_FACTOR either way."""
    lines = []
    for label in support.labels:
        if result.query.plans[label].query_range is not None:
            continue
        predicted, prior = result.volume_ml(label), support_volume_ml(support, label)
        if prior <= 0 or not 1 / VOLUME_WARNING_FACTOR <= predicted / prior <= VOLUME_WARNING_FACTOR:
            lines.append(f"{result.query.prepared.scan.path}: label {label} is predicted at {predicted:.1f} mL, "
                         f"but the support mask's label {label} holds {prior:.1f} mL (more than "
                         f"{VOLUME_WARNING_FACTOR:g}x apart): check the prediction")
    return lines


def query_warnings(query: Query) -> List[str]:
    """The warnings about one query: its scan, and its ranges."""
    return query.prepared.warnings + [line for plan in query.plans.values() for line in plan.warnings]


def log_warnings(lines: Sequence[str]) -> None:
    for line in lines:
        log.warning("warning: %s", line)


def run(args) -> List[QueryResult]:
    """Read and check everything, segment every query, then write the outputs."""
    check_outputs(args)
    ranges = [parse_range(text) for text in args.query_range]
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise ValueError(f"--device {args.device}: {err}") from None
    checkpoint = read_training_checkpoint(args.checkpoint)
    shared: List[str] = list(checkpoint.warnings)   # warnings every query's record carries
    arithmetic, source = training_arithmetic(checkpoint, args.arithmetic, shared)
    reader = VolumeReader(checkpoint.spec, checkpoint.image_size, checkpoint.resample_in_plane)
    context = Context(checkpoint, reader, args.preprocess, arithmetic, source)
    support = prepare_support(args, context)
    check_ranges(ranges, len(args.query), support.labels)
    queries = [prepare_query(i, path, args, context, support, ranges) for i, path in enumerate(args.query)]
    shared += support.prepared.warnings
    log_warnings(shared)
    model = load_model(checkpoint, device, eval_channels_last(args.channels_last, device))
    options = inference_options(args, device, model)
    results, outputs = [], []
    for query in queries:
        log_warnings(query_warnings(query))
        result = segment(model, support, query, device, options, args.probabilities)
        results.append(result)
        implausible = volume_warnings(result, support)
        log_warnings(implausible)
        outputs += query_files(result, support, context, options, device, args.out,
                               shared + query_warnings(query) + implausible)
    write_outputs(outputs)
    return results
