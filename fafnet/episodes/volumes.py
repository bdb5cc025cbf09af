"""Pre-processed volumes as the episodes and the evaluation read them (docs/protocol.md
sections 1, 9 to 11).

Folder layout (one pre-processed dataset, fafnet/io/layout.py): image_<i>.nii.gz and
label_<i>.nii.gz with any integers i (0..N-1 from this project's pre-processing, 1-based and
gapped in the files the FSMIS community distributes), supervoxels_<min size>/ (or, for
SSL-ALPNet's 2D superpixels, superpixels_<min size>/) inside the folder or beside it. Volumes
are ordered by i; folds, support and query volumes are positions in that order, as in the
release. Every label and pseudo-label file is checked to lie on its image's voxel grid
(fafnet.io.nifti.on_reference_grid). Volumes are (slice, row, column) arrays, optionally
resampled in-plane (`resample_in_plane`: images linear, labels and pseudo-labels nearest),
z-scored per volume, and reach the network as 3 identical channels.
"""
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fafnet.datasets.specs import SETTING2_PROTOCOLS, DatasetSpec, get_dataset_spec
from fafnet.io.layout import DatasetLayout, VolumeFiles
from fafnet.io.nifti import Geometry, integer_labels, on_reference_grid, read_volume
from fafnet.io.resample import resample_in_plane as resample_volume_in_plane

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
    check_choice("protocol", protocol, SETTING2_PROTOCOLS)
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
    check_choice("protocol", protocol, SETTING2_PROTOCOLS)
    if protocol != "groups":
        if group is not None:
            raise ValueError(f"group={group!r} applies to the 'groups' protocol only, not {protocol!r}")
        return resolve_test_classes(spec, test_classes)
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


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def fold_of(spec: DatasetSpec, n_volumes: int, eval_fold: int) -> List[int]:
    folds = spec.folds(n_volumes)
    check_choice("eval_fold", eval_fold, range(len(folds)))
    return folds[eval_fold]


def resolve_test_classes(spec: DatasetSpec, test_classes: Optional[Sequence[int]]) -> Tuple[int, ...]:
    classes = tuple(spec.test_classes if test_classes is None else (int(c) for c in test_classes))
    unknown = [c for c in classes if c not in spec.classes]
    if unknown:
        raise ValueError(f"test_classes {unknown} are not classes of {spec.name} "
                         f"(known: {sorted(spec.classes)})")
    return classes


