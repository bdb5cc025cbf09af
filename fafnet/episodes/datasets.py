"""Episodic training data and the evaluation protocol (docs/protocol.md sections 1, 9 and 10).

Folder layout (one pre-processed dataset, fafnet/io/layout.py): image_<i>.nii.gz and
label_<i>.nii.gz with any integers i (0..N-1 from this project's pre-processing, 1-based and
gapped in the files the FSMIS community distributes), supervoxels_<min size>/ (or, for
SSL-ALPNet's 2D superpixels, superpixels_<min size>/) inside the folder or beside it. Volumes
are ordered by i; folds, support and query volumes are positions in that order, as in the
release. Every label and pseudo-label file is checked to lie on its image's voxel grid
(fafnet.io.nifti.on_reference_grid). Volumes are (slice, row, column) arrays, optionally
resampled in-plane (`resample_in_plane`: images linear, labels and pseudo-labels nearest),
z-scored per volume, and reach the network as 3 identical channels.

Episodes follow one of two rules (`EpisodeSampler`'s `rule`): section 9's K + 1 consecutive
slices of a 3D label (`ConsecutiveSlices`: supervoxels or ground truth), or SSL-ALPNet's one
slice and one 2D superpixel, every view augmented on its own (`OneSliceSuperpixel`).
"""
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from fafnet.io.layout import (PSEUDO_LABEL_KINDS, SUPERPIXELS, SUPERVOXELS, DatasetLayout, VolumeFiles,
                              pseudo_label_folder_name)
from fafnet.io.nifti import Geometry, integer_labels, on_reference_grid, read_volume
from fafnet.io.progress import progress
from fafnet.io.resample import resample_in_plane as resample_volume_in_plane
from fafnet.episodes.augment import augment_episode, random_gamma, random_geometric
from fafnet.datasets.specs import SETTING2_PROTOCOLS, DatasetSpec, get_dataset_spec

# Rejection sampling stops with an error after this many restarts (step 1) instead of
# spinning forever on data where episodes are possible but astronomically unlikely.
MAX_RESTARTS = 100_000
# TrainDataset's `pseudo_labels`: 3D supervoxels (the paper's, docs/protocol.md section 13) or
# SSL-ALPNet's 2D superpixels (section 16), each in its folder <name>_<min size>/.
PSEUDO_LABELS = PSEUDO_LABEL_KINDS
SUPERPIXEL_MIN_SIZE = 400   # the original's felzenszwalb min_size
log = logging.getLogger("fafnet.data")


# ----------------------------------------------------------------------------- files

def open_layout(data_dir: str, n_volumes: Optional[int] = None,
                spec: Optional[DatasetSpec] = None) -> DatasetLayout:
    """The volumes of a dataset folder (fafnet/io/layout.py), which must be as many as the folds
    are made for: `n_volumes` if given (the user says how many), else the dataset's known
    count (`spec.n_volumes`; the literature's folds hold for that count only), else any."""
    if n_volumes is not None and n_volumes < 1:
        raise ValueError(f"n_volumes must be positive, got {n_volumes}")
    layout = DatasetLayout(data_dir)
    if n_volumes is not None:
        layout.check_count(n_volumes, f"n_volumes={n_volumes}")
    elif spec is not None and spec.n_volumes is not None:
        layout.check_count(spec.n_volumes, f"{spec.name} has {spec.n_volumes}: the dataset's folds "
                                           f"are fixed lists for {spec.n_volumes} volumes")
    for name, reason in layout.ignored:
        log.info("%s: ignored %s (%s)", data_dir, name, reason)
    return layout


def count_volumes(data_dir: str, n_volumes: Optional[int] = None,
                  spec: Optional[DatasetSpec] = None) -> int:
    """The number N of volumes the folds are made for (`open_layout` checks it)."""
    return len(open_layout(data_dir, n_volumes, spec))


# ----------------------------------------------------------------------------- volumes

def zscore(volume: np.ndarray, path: str = "volume") -> np.ndarray:
    """(x - mean) / std over the whole volume, as float32."""
    mean, std = float(volume.mean(dtype=np.float64)), float(volume.std(dtype=np.float64))
    if not np.isfinite(std) or std == 0.0:
        raise ValueError(f"cannot z-score {path}: the volume is constant or not finite (std={std})")
    return ((volume - mean) / std).astype(np.float32)


def _check_in_plane(shape: Tuple[int, ...], image_size: Optional[Sequence[int]], path: str) -> None:
    if image_size is not None and tuple(shape[1:]) != tuple(image_size):
        raise ValueError(f"{path} has in-plane size {tuple(shape[1:])}, expected {tuple(image_size)} "
                         "(the configured image size; resample_in_plane=[H, W] resamples volumes "
                         "in-plane when they are loaded)")


def read_image(path: str) -> Tuple[np.ndarray, Geometry]:
    """A float32 [Z, H, W] volume as stored and its geometry. A truncated or damaged file,
    or NaN or infinite voxels, are errors naming the file."""
    volume, geometry = read_volume(path, dtype=np.float32, require_finite=True)
    if volume.ndim != 3:
        raise ValueError(f"{path} is not a 3D volume (array shape {volume.shape})")
    return volume, geometry


def load_image(path: str, image_size: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, Geometry]:
    """A z-scored float32 [Z, H, W] volume and its geometry (`read_image`)."""
    volume, geometry = read_image(path)
    _check_in_plane(volume.shape, image_size, path)
    return zscore(volume, path), geometry


def _narrow_int(labels: np.ndarray) -> np.ndarray:
    """Smallest integer dtype that holds the labels (memory: volumes stay in RAM)."""
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top <= 255 else np.int16 if top <= 32767 else np.int32
    return labels.astype(dtype)


def present_values(labels: np.ndarray) -> List[int]:
    """Sorted distinct values of a non-negative integer array."""
    if not labels.size:
        return []
    if int(labels.max()) <= 1 << 20:  # a bincount is much faster than sorting
        return np.flatnonzero(np.bincount(labels.ravel())).tolist()
    return np.unique(labels).tolist()


def ground_truth_values(spec: DatasetSpec) -> List[int]:
    """The values a ground-truth label file of `spec` may hold: 0 and its classes, or the
    raw values of its label map (CMR: 200, 500, 600)."""
    return sorted({0} | set(spec.label_map if spec.label_map is not None else spec.classes))


def map_labels(labels: np.ndarray, label_map: Optional[Dict[int, int]], path: str) -> np.ndarray:
    """Apply a raw -> class id map (CMR: 200/500/600 -> 1/2/3); 0 stays 0."""
    if label_map is None:
        return labels
    present = set(present_values(labels)) - {0}
    unknown = sorted(present - set(label_map))
    if unknown:
        raise ValueError(f"{path} holds label values {unknown} outside the dataset's label map "
                         f"{sorted(label_map)}")
    lookup = np.zeros(max(max(label_map), max(present, default=0)) + 1, dtype=np.int64)
    for raw, mapped in label_map.items():
        lookup[raw] = mapped
    return lookup[labels]


def load_labels(path: str, shape: Tuple[int, ...], like: str,
                label_map: Optional[Dict[int, int]] = None,
                allowed: Optional[Sequence[int]] = None, dataset: str = "the dataset",
                like_geometry: Optional[Geometry] = None, notes: Optional[List] = None) -> np.ndarray:
    """An integer label volume on the grid of the image file `like` (its `shape`).

    Args:
        label_map: raw value -> class id, applied after the checks.
        allowed: the raw values the file may hold (ground truth: see `ground_truth_values`);
            None accepts any non-negative integer (supervoxel ids).
        dataset: named in the error for a value outside `allowed`.
        like_geometry: the image's geometry; when given, the file must lie on the image's
            voxel grid or be reoriented onto it (fafnet.io.nifti.on_reference_grid), else only
            the shapes are compared.
        notes: receives (path, note) when the file needed reorienting or carried no geometry.
    """
    labels, geometry = read_volume(path, dtype=None)
    if like_geometry is not None:
        labels, note = on_reference_grid(labels, geometry, like_geometry, tuple(shape), path, like)
        if note and notes is not None:
            notes.append((path, note))
    elif labels.shape != tuple(shape):
        raise ValueError(f"{path} has shape {labels.shape} but its image {like} has shape {tuple(shape)}")
    labels = integer_labels(labels, path)
    if allowed is not None:
        unknown = sorted(set(present_values(labels)) - set(allowed))
        if unknown:
            raise ValueError(f"{path} holds label values {unknown[:10]}"
                             + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
                             + f" that {dataset} does not define (allowed: {list(allowed)})")
    return _narrow_int(map_labels(labels, label_map, path))


def load_ground_truth(path: str, shape: Tuple[int, ...], like: str, spec: DatasetSpec,
                      like_geometry: Optional[Geometry] = None, notes: Optional[List] = None) -> np.ndarray:
    """A ground-truth label volume checked against the dataset's values and mapped to its
    class ids (`load_labels`)."""
    return load_labels(path, shape, like, spec.label_map, ground_truth_values(spec), spec.name,
                       like_geometry, notes)


@dataclass
class LoadedVolume:
    """One volume on the grid the network sees."""
    files: VolumeFiles
    image: np.ndarray                    # float32 [Z, H, W], z-scored
    geometry: Geometry                   # of that grid (the file's, or the resampled grid)
    ground_truth: Optional[np.ndarray]   # int [Z, H, W], mapped class ids
    supervoxels: Optional[np.ndarray]    # int [Z, H, W]


@dataclass
class VolumeReader:
    """Reads a dataset's volumes: image, ground truth and supervoxels, each checked against
    the image's grid, then resampled in-plane when `resample_in_plane` is set (images linear,
    labels nearest), then checked against `image_size` and z-scored.

    `notes` collects (path, what was done) for files reoriented onto their image's grid or
    used on it without geometry of their own; `log_notes` reports them.
    """
    spec: DatasetSpec
    image_size: Optional[Sequence[int]] = None
    resample_in_plane: Optional[Sequence[int]] = None
    notes: List[Tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.resample_in_plane is not None:
            size = tuple(int(n) for n in self.resample_in_plane)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"resample_in_plane must be [H, W] with positive integers, got "
                                 f"{list(self.resample_in_plane)}")
            if self.image_size is not None and tuple(self.image_size) != size:
                raise ValueError(f"resample_in_plane={list(size)} but image_size={list(self.image_size)}: "
                                 "the network sees the resampled grid, so the two must agree")
            self.resample_in_plane = size

    def read(self, files: VolumeFiles, ground_truth: bool = True,
             supervoxel_path: Optional[str] = None) -> LoadedVolume:
        image, geometry = read_image(files.image)
        labels = load_ground_truth(files.label, image.shape, files.image, self.spec, geometry, self.notes) \
            if ground_truth else None
        supervoxels = load_labels(supervoxel_path, image.shape, files.image, like_geometry=geometry,
                                  notes=self.notes) if supervoxel_path else None
        image, geometry, (labels, supervoxels) = self.to_network_grid(image, geometry, files.image,
                                                                      labels, supervoxels)
        return LoadedVolume(files, image, geometry, labels, supervoxels)

    def to_network_grid(self, image: np.ndarray, geometry: Geometry, path: str,
                        *label_maps: Optional[np.ndarray]) -> Tuple[np.ndarray, Geometry, List]:
        """A pre-processed float32 [Z, H, W] image (as stored in a dataset folder) and label maps
        on its grid (None entries stay None) on the grid the network sees: resampled in-plane
        when `resample_in_plane` is set (image linear, labels nearest), checked against
        `image_size`, the image z-scored. Returns (image, its geometry, the label maps)."""
        if self.resample_in_plane is not None:
            size = self.resample_in_plane
            label_maps = tuple(None if m is None else resample_volume_in_plane(m, geometry, size, "nearest")[0]
                               for m in label_maps)
            image, geometry = resample_volume_in_plane(image, geometry, size, "linear")
        _check_in_plane(image.shape, self.image_size, path)
        return zscore(image, path), geometry, list(label_maps)

    def log_notes(self) -> None:
        """One log line per kind of note, with the number of files and the first of them."""
        counts = Counter(note for _, note in self.notes)
        for note, count in counts.items():
            first = next(path for path, n in self.notes if n == note)
            level = logging.WARNING if "reoriented" in note else logging.INFO
            log.log(level, "%d file(s): %s (first: %s)", count, note, first)


def slice_class_areas(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-slice pixel count of every non-zero label value.

    Args:
        labels: non-negative integer [Z, H, W].
    Returns:
        classes [n] (sorted label values present, 0 excluded), areas int64 [Z, n].
    """
    depth = labels.shape[0]
    flat = labels.reshape(depth, -1).astype(np.int64)
    top = int(flat.max()) if flat.size else 0
    if (top + 1) * depth <= 50_000_000:
        # One bincount over (slice, label) pairs: fast for the usual few thousand labels.
        counts = np.bincount((flat + np.arange(depth)[:, None] * (top + 1)).ravel(),
                             minlength=depth * (top + 1)).reshape(depth, top + 1)
        classes = np.flatnonzero(counts.sum(axis=0))
        classes = classes[classes != 0]
        return classes, counts[:, classes]
    classes, inverse = np.unique(flat, return_inverse=True)
    counts = np.zeros((depth, len(classes)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(depth), flat.shape[1]), inverse.ravel()), 1)
    keep = classes != 0
    return classes[keep], counts[:, keep]


def remaining_slices(ground_truth: np.ndarray, excluded_classes: Sequence[int],
                     protocol: str = "release") -> np.ndarray:
    """Setting 2: which slices training keeps, bool [Z] (True = kept).

    Args:
        ground_truth: non-negative integer [Z, H, W] (mapped class ids).
        excluded_classes: the test classes; for `groups`, the group's classes
            (`excluded_classes_for` resolves them).
        protocol: "release" removes a slice only when it holds ALL excluded classes at once
            (the authors' dataloader, ADNet's likewise); "any" and "groups" remove a slice
            holding ANY of them (the papers' text; Ouyang et al.).
    """
    _check_choice("protocol", protocol, SETTING2_PROTOCOLS)
    depth = ground_truth.shape[0]
    if not len(excluded_classes):
        return np.ones(depth, dtype=bool)
    flat = ground_truth.reshape(depth, -1)
    has_class = np.stack([(flat == c).any(axis=1) for c in excluded_classes], axis=1)
    removed = has_class.all(axis=1) if protocol == "release" else has_class.any(axis=1)
    return ~removed


def excluded_classes_for(dataset: str, protocol: str, test_classes: Optional[Sequence[int]] = None,
                         group: Optional[int] = None) -> Tuple[int, ...]:
    """The classes setting 2 excludes from training (and evaluation then tests).

    "release" and "any": the test classes (default: the dataset's). "groups": the classes of
    `group` (0 or 1, `group_classes`); `test_classes` must then be None or those classes.
    """
    spec = get_dataset_spec(dataset)
    _check_choice("protocol", protocol, SETTING2_PROTOCOLS)
    if protocol != "groups":
        if group is not None:
            raise ValueError(f"group={group!r} applies to the 'groups' protocol only, not {protocol!r}")
        return _resolve_test_classes(spec, test_classes)
    if group is None:
        raise ValueError(f"the 'groups' protocol needs a group (one of "
                         f"{list(range(len(spec.class_groups or ())))}); each group is one training")
    classes = spec.group_classes(group)
    if test_classes is not None and sorted(int(c) for c in test_classes) != sorted(classes):
        raise ValueError(f"protocol 'groups' group {group} of {spec.name} tests classes {list(classes)}, "
                         f"but test_classes is {list(test_classes)}; pass the group's classes or none")
    return classes


def consecutive_runs(mask: np.ndarray, min_length: int = 1) -> List[Tuple[int, int]]:
    """Half-open (start, end) runs of consecutive True entries of a 1D bool array with
    end - start >= min_length, in order."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[0::2], edges[1::2]) if e - s >= min_length]


def to_network_images(images: np.ndarray) -> torch.Tensor:
    """[N, H, W] float -> float32 tensor [N, 3, H, W] (the grey value repeated)."""
    return torch.from_numpy(np.repeat(images[:, None].astype(np.float32, copy=False), 3, axis=1))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _fold(spec: DatasetSpec, n_volumes: int, eval_fold: int) -> List[int]:
    folds = spec.folds(n_volumes)
    _check_choice("eval_fold", eval_fold, range(len(folds)))
    return folds[eval_fold]


def _resolve_test_classes(spec: DatasetSpec, test_classes: Optional[Sequence[int]]) -> Tuple[int, ...]:
    classes = tuple(spec.test_classes if test_classes is None else (int(c) for c in test_classes))
    unknown = [c for c in classes if c not in spec.classes]
    if unknown:
        raise ValueError(f"test_classes {unknown} are not classes of {spec.name} "
                         f"(known: {sorted(spec.classes)})")
    return classes


# ----------------------------------------------------------------------------- training

@dataclass
class TrainVolume:
    """One training volume in memory, with what episode sampling needs precomputed."""
    index: int                 # the volume's position in the dataset (folds count positions)
    image: np.ndarray          # float32 [Z, H, W], z-scored
    labels: np.ndarray         # int [Z, H, W]: supervoxels, or ground truth minus test classes
    classes: np.ndarray        # [n] label values present, 0 excluded
    areas: np.ndarray          # int64 [Z, n] pixels of each class per slice
    allowed: np.ndarray        # bool [Z]; False where setting 2 removes the slice
    feasible: bool             # some class has a start passing steps 3 to 5 (section 9's rule;
                               # `OneSliceSuperpixel` finds its own candidates)
    files: Optional[VolumeFiles] = None   # where it came from

    def runs(self, class_pos: int, length: int) -> List[Tuple[int, int]]:
        """Runs of >= `length` consecutive allowed slices containing class `classes[class_pos]`."""
        return consecutive_runs((self.areas[:, class_pos] > 0) & self.allowed, length)


def _has_feasible_episode(areas: np.ndarray, allowed: np.ndarray, n_shot: int, min_size: int) -> bool:
    """Whether any class has K+1 consecutive allowed slices starting at s with
    max(area[s], area[s + 1]) >= min_size."""
    depth, window = areas.shape[0], n_shot + 1
    if depth < window or areas.shape[1] == 0:
        return False
    candidate = ((areas > 0) & allowed[:, None]).astype(np.int64)
    cumulative = np.concatenate([np.zeros((1, areas.shape[1]), np.int64), np.cumsum(candidate, axis=0)])
    fits = (cumulative[window:] - cumulative[:-window]) == window         # [Z - K, n]
    large = np.maximum(areas[:-1], areas[1:])[: depth - n_shot] >= min_size
    return bool((fits & large).any())


def without_classes(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """`labels` with the values `classes` set to 0 (background), in place; returned."""
    labels[np.isin(labels, list(classes))] = 0
    return labels


def make_train_volume(index: int, image: np.ndarray, labels: np.ndarray, allowed: np.ndarray,
                      n_shot: int, min_size: int, files: Optional[VolumeFiles] = None) -> TrainVolume:
    """A TrainVolume with the per-slice class areas and feasibility that sampling needs."""
    classes, areas = slice_class_areas(labels)
    feasible = _has_feasible_episode(areas, allowed, n_shot, min_size)
    return TrainVolume(index, image, labels, classes, areas, allowed, feasible, files)


def check_pseudo_labels(pseudo_labels: str, superpixel_min_size: int, use_gt: bool) -> Tuple[str, int]:
    """TrainDataset's `pseudo_labels` and `superpixel_min_size`, checked; returned as stored."""
    _check_choice("pseudo_labels", pseudo_labels, PSEUDO_LABELS)
    if isinstance(superpixel_min_size, bool) or not isinstance(superpixel_min_size, (int, np.integer)) \
            or superpixel_min_size < 1:
        raise ValueError(f"superpixel_min_size must be a positive integer, got {superpixel_min_size!r}")
    if use_gt and pseudo_labels != SUPERVOXELS:
        raise ValueError(f"pseudo_labels={pseudo_labels!r} applies to self-supervised training only; with "
                         f"use_gt=True episodes come from the ground truth (set use_gt=False to train on "
                         f"superpixels_{superpixel_min_size}/, or pseudo_labels='supervoxels')")
    return pseudo_labels, int(superpixel_min_size)


def check_sampling_options(n_shot: int, max_iters_per_load: int) -> None:
    if n_shot < 1:
        raise ValueError(f"n_shot must be at least 1, got {n_shot}")
    if max_iters_per_load < 1:
        raise ValueError(f"max_iters_per_load must be positive, got {max_iters_per_load}")


class ConsecutiveSlices:
    """Section 9's episode rule (steps 1 to 7) for 3D labels, supervoxels or ground truth: K + 1
    consecutive slices holding one class, the first K supports and the last the query.

    Args:
        volumes: the TrainVolumes (`make_train_volume`, which precomputes `feasible`).
        n_shot, min_size: as for `TrainDataset`.
        source: where the volumes come from, for error messages.
    """

    def __init__(self, volumes: Sequence[TrainVolume], n_shot: int, min_size: int, source: str):
        self.volumes, self.n_shot, self.min_size, self.source = volumes, n_shot, min_size, source

    def possible(self) -> bool:
        return any(v.feasible for v in self.volumes)

    def requirement(self) -> str:
        """What no volume offers when `possible` is False."""
        return (f"no volume has {self.n_shot + 1} consecutive usable slices of one class with "
                f">= {self.min_size} pixels")

    def sample(self, rng: np.random.Generator) -> Tuple[TrainVolume, int, List[int]]:
        """Steps 1 to 6: (volume, class position in volume.classes, K + 1 slice indices)."""
        window = self.n_shot + 1
        for _ in range(MAX_RESTARTS):
            volume = self.volumes[rng.integers(len(self.volumes))]          # step 1
            if not volume.feasible:
                continue  # every class would restart or loop forever in step 5
            class_pos = rng.integers(len(volume.classes))                    # step 2
            while True:
                runs = volume.runs(class_pos, window)                        # step 3
                if not runs:
                    break                                                    # start over
                run_start, run_end = runs[rng.integers(len(runs))]           # step 4
                start = int(rng.integers(run_start, run_end - self.n_shot))
                areas = volume.areas[start:start + 2, class_pos]
                if areas.max() >= self.min_size:                             # step 5
                    slices = list(range(start, start + window))
                    if rng.random() < 0.5:                                   # step 6
                        slices.reverse()
                    return volume, int(class_pos), slices
                class_pos = rng.integers(len(volume.classes))
        raise RuntimeError(f"no episode found after {MAX_RESTARTS} restarts; the data in "
                           f"{self.source} barely allows any (check min_size={self.min_size})")

    @staticmethod
    def augment(support_images, support_masks, query_images, query_masks, rng: np.random.Generator):
        """Step 7 (`augment_episode`): gamma on the supports or on the query, then the
        geometric transform on the supports or on the query (two coin flips)."""
        return augment_episode(support_images, support_masks, query_images, query_masks, rng)


class OneSliceSuperpixel:
    """SSL-ALPNet's episode rule for 2D superpixels (docs/protocol.md section 16): labels
    have no identity across slices, so an episode is one slice and one of its superpixels,
    and the K supports and the query are K + 1 copies of that slice and mask, each augmented
    on its own.

    Candidates: (slice, superpixel) with the slice allowed (setting 2) and the superpixel's
    area on that slice >= min_size (and > 0). Sampling: a volume uniformly among those with a
    candidate, a slice uniformly among its slices with a candidate, a superpixel uniformly
    among that slice's candidates (three `rng.integers` draws, no rejection loop).

    Args: as for `ConsecutiveSlices`.
    """

    def __init__(self, volumes: Sequence[TrainVolume], n_shot: int, min_size: int, source: str):
        self.volumes, self.n_shot, self.min_size, self.source = volumes, n_shot, min_size, source
        # bool [Z, n] per volume, and the volumes having any candidate
        self.candidates = [(v.areas > 0) & (v.areas >= min_size) & v.allowed[:, None] for v in volumes]
        self.usable = [i for i, c in enumerate(self.candidates) if c.any()]

    def possible(self) -> bool:
        return bool(self.usable)

    def requirement(self) -> str:
        return f"no volume has a usable slice with a superpixel of >= {self.min_size} pixels"

    def sample(self, rng: np.random.Generator) -> Tuple[TrainVolume, int, List[int]]:
        """(volume, superpixel position in volume.classes, [slice] * (K + 1))."""
        position = self.usable[rng.integers(len(self.usable))]
        volume, candidates = self.volumes[position], self.candidates[position]
        slices = np.flatnonzero(candidates.any(axis=1))
        slice_index = int(slices[rng.integers(len(slices))])
        superpixels = np.flatnonzero(candidates[slice_index])
        class_pos = int(superpixels[rng.integers(len(superpixels))])
        return volume, class_pos, [slice_index] * (self.n_shot + 1)

    @staticmethod
    def augment(support_images, support_masks, query_images, query_masks, rng: np.random.Generator):
        """Every view gets its own draws, supports first (in order) then the query: a gamma
        (`random_gamma`, on that view's own intensity range), then an affine and an elastic
        field (`random_geometric`), so no two views are identical copies."""
        k = len(support_images)
        images = np.concatenate([support_images, query_images]).astype(np.float32, copy=True)
        masks = np.concatenate([support_masks, query_masks]).astype(np.float32, copy=True)
        for view in range(len(images)):
            image = random_gamma(images[view:view + 1], rng)
            images[view:view + 1], masks[view:view + 1] = random_geometric(image, masks[view:view + 1], rng)
        return images[:k], masks[:k], images[k:], masks[k:]


class EpisodeSampler(Dataset):
    """Episode sampling and augmentation (docs/protocol.md section 9, steps 1 to 7) over
    training volumes held in memory; `TrainDataset` reads them from a dataset folder.

    Args:
        volumes: the TrainVolumes (`make_train_volume`).
        n_shot, min_size, augment, seed, max_iters_per_load: as for `TrainDataset` (whose
            defaults are the release's; none here, so they are set in one place).
        source: where the volumes come from, for error messages.
        detail: what made them, appended to the error when no episode is possible.
        rule: which slices and class an episode takes and how its views are augmented:
            `ConsecutiveSlices` (section 9, 3D labels; the default) or `OneSliceSuperpixel`
            (2D superpixels). Everything else (the generator, the masks, the tensors) is shared.
    """

    def __init__(self, volumes: Sequence[TrainVolume], n_shot: int, min_size: int, augment: bool, seed: int,
                 max_iters_per_load: int, source: str = "the volumes in memory", detail: str = "",
                 rule: type = ConsecutiveSlices):
        check_sampling_options(n_shot, max_iters_per_load)
        self.volumes, self.data_dir = list(volumes), source
        self.n_shot, self.min_size = int(n_shot), int(min_size)
        self.augment, self.seed, self.max_iters_per_load = bool(augment), int(seed), int(max_iters_per_load)
        self.rule = rule(self.volumes, self.n_shot, self.min_size, source)
        if not self.rule.possible():
            raise ValueError(f"no training episode is possible in {source}: {self.rule.requirement()}{detail}")

    def __len__(self) -> int:
        return self.max_iters_per_load

    def sample_slices(self, rng: np.random.Generator) -> Tuple[TrainVolume, int, List[int]]:
        """(volume, class position in volume.classes, K + 1 slice indices: supports, then the
        query), by the sampler's rule (section 9's steps 1 to 6 by default)."""
        return self.rule.sample(rng)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if index < 0:
            raise IndexError(f"episode index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        volume, class_pos, slices = self.sample_slices(rng)
        class_id = int(volume.classes[class_pos])
        images = volume.image[slices]
        masks = (volume.labels[slices] == class_id).astype(np.float32)
        k = self.n_shot
        support_images, support_masks, query_images, query_masks = images[:k], masks[:k], images[k:], masks[k:]
        if self.augment:
            support_images, support_masks, query_images, query_masks = self.rule.augment(
                support_images, support_masks, query_images, query_masks, rng)
        return {
            "support_images": to_network_images(support_images),
            "support_masks": torch.from_numpy(np.ascontiguousarray(support_masks, dtype=np.float32)),
            "query_images": to_network_images(query_images),
            "query_labels": torch.from_numpy(query_masks.astype(np.int64)),
            "class_id": class_id,
            "volume_index": volume.index,
            "slice_indices": [int(s) for s in slices],
        }


def _check_same_in_plane(volumes: Sequence[TrainVolume]) -> None:
    first = volumes[0].image.shape[1:]
    for volume in volumes[1:]:
        if volume.image.shape[1:] != first:
            raise ValueError(f"{volume.files.image} has in-plane size {volume.image.shape[1:]}, but "
                             f"{volumes[0].files.image} has {first}; training volumes must share "
                             "one size (resample_in_plane=[H, W] resamples them when they are loaded)")


class TrainDataset(EpisodeSampler):
    """Episodes for 1-way K-shot training (docs/protocol.md section 9) from the volumes of a
    dataset folder: this class reads them and builds their labels; `EpisodeSampler` samples.

    Args:
        data_dir: folder with image_<i>.nii.gz, label_<i>.nii.gz (fafnet/io/layout.py), and
            supervoxels_<N>/ (or superpixels_<N>/) inside it or beside it.
        dataset: key of `DATASETS` (classes, test classes, supervoxel size, label map).
        eval_fold: the fold held out; training uses every other volume.
        n_shot: K support slices per episode.
        use_gt: episode labels from the ground truth with the excluded classes set to 0;
            False (default, the paper's self-supervised setting) uses the pseudo-labels.
        setting: 1 (default, the release's scripts) keeps every slice; 2 removes slices with
            test classes, decided from the ground truth in both label modes.
        setting2_protocol: setting 2's protocol, one of `SETTING2_PROTOCOLS`: "release" (default: a
            slice is removed only when it holds ALL test classes), "any" (a slice holding any
            test class is removed) or "groups" (Ouyang et al.: the classes of `group` are
            excluded with the any rule). Ignored for setting 1.
        group: for protocol "groups", the group trained without (0 or 1, see `group_classes`).
        test_classes: default: the dataset's; for "groups", None or the group's classes.
        min_size: the larger foreground of the first two chosen slices must reach this.
        supervoxel_min_size: picks supervoxels_<N>/; default: the dataset's.
        pseudo_labels: the self-supervised labels (use_gt=False): "supervoxels" (default, the
            paper's: 3D supervoxels, episodes of K + 1 consecutive slices, `ConsecutiveSlices`)
            or "superpixels" (SSL-ALPNet's 2D superpixels from superpixels_<N>/: one slice and
            one superpixel, the K supports and the query each augmented on its own,
            `OneSliceSuperpixel`; min_size then applies to the superpixel's area). With
            use_gt=True only "supervoxels" (the default, which is then unused) is accepted.
        superpixel_min_size: picks superpixels_<N>/ (default 400, the original's).
        augment: gamma, affine and elastic augmentation (step 7).
        seed: episode `index` uses np.random.default_rng([seed, index]) and nothing else, so
            any index >= 0 (also >= len) is reproducible in any worker or after a resume.
        max_iters_per_load: the epoch length, `len(self)`.
        n_volumes: the number of volumes the folder holds and the folds are made for;
            default: the dataset's known count (any for the synthetic dataset).
        image_size: optional (H, W) every volume must have (after resampling).
        resample_in_plane: optional (H, W): every volume is resampled in-plane to it when
            loaded (images linear, supervoxels and labels nearest; `VolumeReader`).

    An item is a dict: "support_images" float32 [K, 3, H, W], "support_masks" float32 [K, H, W]
    in {0, 1}, "query_images" float32 [1, 3, H, W], "query_labels" int64 [1, H, W] in {0, 1},
    "class_id" int (supervoxel, superpixel or organ id), "volume_index" int (the volume's position),
    "slice_indices" list of K + 1 slice indices in the volume (supports, then the query).
    """

    def __init__(self, data_dir: str, dataset: str = "SABS", eval_fold: int = 0, n_shot: int = 1,
                 use_gt: bool = False, setting: int = 1, setting2_protocol: str = "release",
                 group: Optional[int] = None, test_classes: Optional[Sequence[int]] = None,
                 min_size: int = 200,
                 supervoxel_min_size: Optional[int] = None, augment: bool = True, seed: int = 2025,
                 max_iters_per_load: int = 3000, n_volumes: Optional[int] = None,
                 image_size: Optional[Sequence[int]] = None,
                 resample_in_plane: Optional[Sequence[int]] = None,
                 pseudo_labels: str = SUPERVOXELS, superpixel_min_size: int = SUPERPIXEL_MIN_SIZE):
        self.spec = get_dataset_spec(dataset)
        _check_choice("setting", setting, (1, 2))
        check_sampling_options(n_shot, max_iters_per_load)   # before the volumes are read
        self.pseudo_labels, self.superpixel_min_size = check_pseudo_labels(pseudo_labels, superpixel_min_size, use_gt)
        self.data_dir, self.n_shot, self.use_gt = data_dir, int(n_shot), bool(use_gt)
        self.setting, self.protocol, self.group = setting, setting2_protocol, group
        self.min_size = int(min_size)
        # The classes setting 2 removes; in setting 1 the test classes, which ground-truth
        # labels still drop (they are the classes evaluation tests).
        self.test_classes = excluded_classes_for(dataset, setting2_protocol, test_classes, group)
        self.supervoxel_min_size = int(self.spec.supervoxel_min_size if supervoxel_min_size is None
                                       else supervoxel_min_size)
        self.layout = open_layout(data_dir, n_volumes, self.spec)
        self.n_volumes = len(self.layout)
        held_out = set(_fold(self.spec, self.n_volumes, eval_fold))
        self.eval_fold = eval_fold
        self.volume_indices = [i for i in range(self.n_volumes) if i not in held_out]
        # One scan of the pseudo-label folder serves every volume (and `source_files`).
        self._pseudo_label_files = None if use_gt else \
            self.layout.pseudo_label_files(self.pseudo_labels, self.pseudo_label_min_size)
        self.reader = VolumeReader(self.spec, image_size, resample_in_plane)
        volumes = [self._load(self.layout[i], self._pseudo_label_files) for i in
                   progress(self.volume_indices, desc="loading training volumes", unit="volume")]
        self.reader.log_notes()
        _check_same_in_plane(volumes)
        folder = pseudo_label_folder_name(self.pseudo_labels, self.pseudo_label_min_size)
        labels = "ground truth" if use_gt else f"pseudo_labels={self.pseudo_labels} from {folder}/"
        super().__init__(volumes, n_shot, min_size, augment, seed, max_iters_per_load, source=data_dir,
                         detail=f" (setting {setting}, {self.protocol_name}, use_gt={use_gt}, {labels})",
                         rule=OneSliceSuperpixel if self.pseudo_labels == SUPERPIXELS else ConsecutiveSlices)

    @property
    def pseudo_label_min_size(self) -> int:
        """The N of the pseudo-label folder read: supervoxel_min_size or superpixel_min_size."""
        return self.superpixel_min_size if self.pseudo_labels == SUPERPIXELS else self.supervoxel_min_size

    def _load(self, files: VolumeFiles, pseudo_label_files: Optional[Dict[int, str]]) -> TrainVolume:
        needs_gt = self.use_gt or self.setting == 2
        pseudo_labels = None if self.use_gt else \
            self.layout.pseudo_label_path(self.pseudo_labels, files, self.pseudo_label_min_size, pseudo_label_files)
        # The reader checks pseudo-labels of either kind against the image's grid alike.
        volume = self.reader.read(files, ground_truth=needs_gt, supervoxel_path=pseudo_labels)
        allowed = np.ones(volume.image.shape[0], dtype=bool)
        if self.setting == 2:
            allowed = remaining_slices(volume.ground_truth, self.test_classes, self.protocol)
        labels = without_classes(volume.ground_truth, self.test_classes) if self.use_gt else volume.supervoxels
        return make_train_volume(files.position, volume.image, labels, allowed, self.n_shot, self.min_size, files)

    def source_files(self) -> List[str]:
        """The files training reads: each training volume's image, its label file when the
        episodes or setting 2 use it, and its supervoxel (or superpixel) file."""
        paths = []
        for volume in self.volumes:
            paths.append(volume.files.image)
            if self.use_gt or self.setting == 2:
                paths.append(volume.files.label)
            if not self.use_gt:
                paths.append(self.layout.pseudo_label_path(self.pseudo_labels, volume.files,
                                                           self.pseudo_label_min_size, self._pseudo_label_files))
        return paths

    @property
    def protocol_name(self) -> str:
        """Setting 2's protocol as recorded with results: "release", "any", "groups/<group>";
        "none" in setting 1."""
        if self.setting == 1:
            return "none"
        return f"groups/{self.group}" if self.protocol == "groups" else self.protocol

# ----------------------------------------------------------------------------- evaluation

def slices_containing(labels: np.ndarray, class_id: int) -> List[int]:
    """Indices of the slices of a [Z, H, W] label volume that hold `class_id`."""
    return np.flatnonzero((labels == class_id).any(axis=(1, 2))).tolist()


def protocol_support_slices(with_class: Sequence[int], n_part: int = 3) -> List[int]:
    """The support slices of the evaluation protocol: of the slices holding the class
    (`with_class`, ascending), those at positions `support_slice_positions`."""
    return [with_class[p] for p in support_slice_positions(len(with_class), n_part)]


def support_slice_positions(count: int, n_part: int = 3) -> List[int]:
    """Positions int(f * count) for f = 1/6, 1/2, 5/6 (n_part = 3; generally (2i + 1) / (2 n_part)),
    in exact integer arithmetic."""
    return [(2 * i + 1) * count // (2 * n_part) for i in range(n_part)]


def chunk_bounds(n: int, n_part: int = 3) -> List[Tuple[int, int]]:
    """Contiguous (start, end) chunks of n slices: boundaries linspace(0, n, n_part + 1) cast to int."""
    edges = np.linspace(0, n, n_part + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@dataclass
class TestVolume:
    index: int               # the volume's position in the dataset
    image: np.ndarray        # float32 [Z, H, W], z-scored
    labels: np.ndarray       # int [Z, H, W], mapped ground truth
    geometry: Optional[Geometry] = None   # of the grid the arrays are on (None: made in memory)
    files: Optional[VolumeFiles] = None   # where it came from (None: made in memory)

    @property
    def path(self) -> str:
        """The image file."""
        return self.files.image if self.files else f"<volume {self.index} in memory>"

    @property
    def name(self) -> str:
        """The image file's name ("image_12.nii.gz")."""
        return self.files.name if self.files else f"volume_{self.index}"

    @property
    def number(self) -> int:
        """The i of image_<i> (equal to `index` in this project's 0-based layout)."""
        return self.files.number if self.files else self.index

    def slices_with(self, class_id: int) -> List[int]:
        return slices_containing(self.labels, class_id)


class EvaluationFold:
    """The evaluation protocol (docs/protocol.md section 10) over one fold's volumes held in
    memory: the support slices of a class and the query chunks. `TestDataset` reads the
    volumes from a dataset folder.

    Args:
        volumes: fold position -> TestVolume, for every volume of the fold.
        supp_idx: position in the sorted fold of the support volume; the others are queries.
        n_part: support slices per class and query chunks (3).
    """

    def __init__(self, volumes: Dict[int, TestVolume], supp_idx: int = 0, n_part: int = 3):
        if n_part < 1:
            raise ValueError(f"n_part must be at least 1, got {n_part}")
        self.n_part = int(n_part)
        self._volumes = dict(volumes)
        self.fold_volumes = sorted(self._volumes)
        self.select_support(supp_idx)
        support = self._volumes[self.support_volume]
        for volume in self._volumes.values():
            if volume.image.shape[1:] != support.image.shape[1:]:
                raise ValueError(f"{volume.path} has in-plane size {volume.image.shape[1:]}, but the "
                                 f"support {support.path} has {support.image.shape[1:]}")

    def volume(self, position: int) -> TestVolume:
        """A loaded volume of the fold by its position."""
        return self._volumes[position]

    def file_name(self, position: int) -> str:
        """The image file name of the volume at `position` ("image_12.nii.gz")."""
        return self._volumes[position].name

    def select_support(self, supp_idx: int) -> None:
        """Make fold position `supp_idx` the support volume and the others the queries
        (several support indices are evaluated one after another on the loaded volumes)."""
        _check_choice("supp_idx", supp_idx, range(len(self.fold_volumes)))
        self.supp_idx = supp_idx
        self.support_volume = self.fold_volumes[supp_idx]
        self.query_volumes = [i for i in self.fold_volumes if i != self.support_volume]

    def support(self, class_id: int) -> Dict[str, object]:
        """The n_part support slices of `class_id` at fractions 1/6, 1/2, 5/6 of the support
        volume's slices containing it: "images" [n_part, 3, H, W], "masks" [n_part, H, W]
        float32, "slice_indices", "volume_index" (position), "image_name"."""
        volume = self._volumes[self.support_volume]
        with_class = volume.slices_with(class_id)
        if not with_class:
            raise ValueError(f"class {class_id} does not occur in the support volume {volume.path}")
        slices = protocol_support_slices(with_class, self.n_part)
        return {
            "images": to_network_images(volume.image[slices]),
            "masks": torch.from_numpy((volume.labels[slices] == class_id).astype(np.float32)),
            "slice_indices": slices,
            "volume_index": volume.index,
            "image_name": volume.name,
        }

    def queries(self, class_id: int) -> Iterator[Dict[str, object]]:
        """One dict per query volume (sorted): its n slices containing `class_id` ("images"
        [n, 3, H, W] float32, "labels" [n, H, W] int64 binary, "slice_indices"), "chunks"
        (start, end) into those n (chunk i goes with support slice i), "volume_index" (its
        position), "image_path", "image_name", "image_number" (the i of image_<i>),
        "label_volume" (full mapped [Z, H, W]), "geometry", "volume_shape".
        A volume without the class gives n = 0 (empty tensors, chunks (0, 0)): skip it."""
        for index in self.query_volumes:
            volume = self._volumes[index]
            slices = volume.slices_with(class_id)
            yield {
                "volume_index": index,
                "images": to_network_images(volume.image[slices]),
                "labels": torch.from_numpy((volume.labels[slices] == class_id).astype(np.int64)),
                "slice_indices": slices,
                "chunks": chunk_bounds(len(slices), self.n_part),
                "image_path": volume.path,
                "image_name": volume.name,
                "image_number": volume.number,
                "label_volume": volume.labels,
                "geometry": volume.geometry,
                "volume_shape": tuple(volume.image.shape),
            }


class TestDataset(EvaluationFold):
    """The evaluation protocol for one fold of a dataset folder.

    Args:
        data_dir, dataset, n_volumes, image_size, resample_in_plane: as for `TrainDataset`.
        eval_fold: the fold evaluated; its volumes' positions, sorted, are `fold_volumes`.
        supp_idx: position in `fold_volumes` of the support volume; the others are queries.
        n_part: support slices per class and query chunks (3).
        test_classes: default: the dataset's.
    """
    __test__ = False  # not a pytest test class despite the name

    def __init__(self, data_dir: str, dataset: str = "SABS", eval_fold: int = 0, supp_idx: int = 0,
                 n_part: int = 3, n_volumes: Optional[int] = None,
                 test_classes: Optional[Sequence[int]] = None, image_size: Optional[Sequence[int]] = None,
                 resample_in_plane: Optional[Sequence[int]] = None):
        self.spec = get_dataset_spec(dataset)
        if n_part < 1:
            raise ValueError(f"n_part must be at least 1, got {n_part}")
        self.data_dir, self.eval_fold = data_dir, eval_fold
        self.test_classes = list(_resolve_test_classes(self.spec, test_classes))
        self.layout = open_layout(data_dir, n_volumes, self.spec)
        self.n_volumes = len(self.layout)
        fold = sorted(_fold(self.spec, self.n_volumes, eval_fold))
        _check_choice("supp_idx", supp_idx, range(len(fold)))   # before the volumes are read
        self.reader = VolumeReader(self.spec, image_size, resample_in_plane)
        volumes = {i: self._load(i) for i in progress(fold, desc="loading test volumes", unit="volume")}
        self.reader.log_notes()
        super().__init__(volumes, supp_idx, n_part)

    def _load(self, position: int) -> TestVolume:
        files = self.layout[position]
        volume = self.reader.read(files, ground_truth=True)
        return TestVolume(position, volume.image, volume.ground_truth, volume.geometry, files)
