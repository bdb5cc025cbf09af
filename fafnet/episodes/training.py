"""Episodic training data (docs/protocol.md section 9): the fold's training volumes in memory
and the episodes drawn from them.

Episodes follow one of two rules (`EpisodeSampler`'s `rule`): section 9's K + 1 consecutive
slices of a 3D label (`ConsecutiveSlices`: supervoxels or ground truth), or SSL-ALPNet's one
slice and one 2D superpixel, every view augmented on its own (`OneSliceSuperpixel`).
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.augment import augment_episode, random_gamma, random_geometric
from fafnet.episodes.volumes import (VolumeReader, check_choice, consecutive_runs, excluded_classes_for, fold_of,
                                     open_layout, remaining_slices, slice_class_areas, to_network_images)
from fafnet.io.layout import PSEUDO_LABEL_KINDS, SUPERPIXELS, SUPERVOXELS, VolumeFiles, pseudo_label_folder_name
from fafnet.io.progress import progress

# Rejection sampling stops with an error after this many restarts (step 1) instead of
# spinning forever on data where episodes are possible but astronomically unlikely.
MAX_RESTARTS = 100_000
# TrainDataset's `pseudo_labels`: 3D supervoxels (the paper's, docs/protocol.md section 13) or
# SSL-ALPNet's 2D superpixels (section 16), each in its folder <name>_<min size>/.
PSEUDO_LABELS = PSEUDO_LABEL_KINDS
SUPERPIXEL_MIN_SIZE = 400   # the original's felzenszwalb min_size
log = logging.getLogger("fafnet.data")


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
    check_choice("pseudo_labels", pseudo_labels, PSEUDO_LABELS)
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
        check_choice("setting", setting, (1, 2))
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
        held_out = set(fold_of(self.spec, self.n_volumes, eval_fold))
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

