"""The evaluation fold (docs/protocol.md section 10): the support slices of a class, the query
volumes' slices holding it and their chunks, read from a dataset folder (`TestDataset`) or
held in memory (`EvaluationFold`).
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.volumes import (VolumeReader, check_choice, fold_of, open_layout, resolve_test_classes,
                                     to_network_images)
from fafnet.io.layout import VolumeFiles
from fafnet.io.nifti import Geometry
from fafnet.io.progress import progress


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
        check_choice("supp_idx", supp_idx, range(len(self.fold_volumes)))
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
        self.test_classes = list(resolve_test_classes(self.spec, test_classes))
        self.layout = open_layout(data_dir, n_volumes, self.spec)
        self.n_volumes = len(self.layout)
        fold = sorted(fold_of(self.spec, self.n_volumes, eval_fold))
        check_choice("supp_idx", supp_idx, range(len(fold)))   # before the volumes are read
        self.reader = VolumeReader(self.spec, image_size, resample_in_plane)
        volumes = {i: self._load(i) for i in progress(fold, desc="loading test volumes", unit="volume")}
        self.reader.log_notes()
        super().__init__(volumes, supp_idx, n_part)

    def _load(self, position: int) -> TestVolume:
        files = self.layout[position]
        volume = self.reader.read(files, ground_truth=True)
        return TestVolume(position, volume.image, volume.ground_truth, volume.geometry, files)
