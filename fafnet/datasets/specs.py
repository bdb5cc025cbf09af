"""Static facts about each benchmark dataset (docs/protocol.md sections 9.3, 10 and 11).

One `DatasetSpec` per dataset key: the pre-processed folder name, how many volumes it has,
the image size the network sees, class names, the test classes, the supervoxel minimum size,
the raw-label mapping applied at load time (CMR stores 200/500/600), the class groups of
setting 2's `groups` protocol (Ouyang et al.), and what the raw scans look like (modality,
typical spacing: segment.py's warnings).
Folds follow the literature's rule: five contiguous folds overlapping by one volume, the
last one also taking volume 0. For a dataset's known volume count they are the fixed lists
that every paper uses (SABS 30, CHAOST2 20, CMR 35, Prostate_MRI 40).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one dataset.

    n_volumes: the volume count the literature's folds are made for; None where the dataset
        has no fixed count (the synthetic phantom is generated with any number of subjects).
    class_groups: setting 2's `groups` protocol trains once per group, excluding that group's
        classes, and tests on them; None where the literature defines no groups.
    modality: "CT" or "MR", what the raw scans are (segment.py warns when a scan's intensities
        or DICOM Modality tag say otherwise); None where no check applies (the phantom).
    raw_spacing: (x, y, z) mm, a typical raw scan's spacing, approximate (the public releases
        vary around it); segment.py warns when a scan is more than 2x off on an axis. None: no
        check.
    """
    name: str
    folder: str
    n_volumes: Optional[int]
    image_size: Tuple[int, int]
    classes: Dict[int, str]
    test_classes: Tuple[int, ...]
    supervoxel_min_size: int
    label_map: Optional[Dict[int, int]] = field(default=None)
    class_groups: Optional[Tuple[Tuple[int, ...], ...]] = field(default=None)
    modality: Optional[str] = field(default=None)
    raw_spacing: Optional[Tuple[float, float, float]] = field(default=None)

    def folds(self, n_volumes: Optional[int] = None) -> List[List[int]]:
        """The five evaluation folds as lists of volume indices, for `n_volumes` volumes
        (default: the dataset's known count)."""
        count = self.n_volumes if n_volumes is None else n_volumes
        if count is None:
            raise ValueError(f"{self.name} has no fixed volume count; give n_volumes")
        return make_folds(count)

    def group_classes(self, group: int) -> Tuple[int, ...]:
        """The classes of setting 2's `groups` protocol group `group` (0 or 1)."""
        if not self.class_groups:
            raise ValueError(f"the 'groups' protocol of setting 2 defines no class groups for "
                             f"{self.name} (groups exist for "
                             f"{', '.join(k for k, v in DATASETS.items() if v.class_groups)}); "
                             "use the 'release' or 'any' protocol")
        if group not in range(len(self.class_groups)):
            raise ValueError(f"group must be one of {list(range(len(self.class_groups)))} for "
                             f"{self.name}, got {group!r}")
        return self.class_groups[group]


def make_folds(n_volumes: int, n_folds: int = 5) -> List[List[int]]:
    """Contiguous folds of `n_volumes // n_folds + 1` volumes overlapping by one; the last
    fold runs to the end and also takes volume 0.

    >>> make_folds(30)[4]
    [24, 25, 26, 27, 28, 29, 0]
    """
    step = n_volumes // n_folds
    if step < 1:
        raise ValueError(f"need at least {n_folds} volumes for {n_folds} folds, got {n_volumes}")
    folds = [list(range(i * step, (i + 1) * step + 1)) for i in range(n_folds - 1)]
    folds.append(list(range((n_folds - 1) * step, n_volumes)) + [0])
    return folds


# Ouyang et al.'s setting 2 for abdominal data: one training excludes (and is tested on) the
# kidneys, the other liver and spleen.
SABS_GROUPS = ((2, 3), (1, 6))

SABS_CLASSES = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "aorta", 9: "IVC", 10: "portal and splenic vein",
    11: "pancreas", 12: "right adrenal", 13: "left adrenal",
}

DATASETS: Dict[str, DatasetSpec] = {
    "SABS": DatasetSpec(
        name="SABS", folder="sabs_CT_normalized", n_volumes=30, image_size=(257, 257),
        classes=SABS_CLASSES, test_classes=(1, 2, 3, 6), supervoxel_min_size=5000,
        # Synapse abdominal CT: in-plane about 0.54-0.98 mm, slices about 2.5-5 mm.
        class_groups=SABS_GROUPS, modality="CT", raw_spacing=(0.76, 0.76, 3.0)),
    "CHAOST2": DatasetSpec(
        name="CHAOST2", folder="chaos_MR_T2_normalized", n_volumes=20, image_size=(256, 256),
        classes={1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"},
        test_classes=(1, 2, 3, 4), supervoxel_min_size=5000,
        # CHAOS T2-SPIR: in-plane about 1.36-1.89 mm, slices about 5.5-9 mm.
        class_groups=((2, 3), (1, 4)), modality="MR", raw_spacing=(1.6, 1.6, 7.7)),
    "CMR": DatasetSpec(
        name="CMR", folder="cmr_MR_normalized", n_volumes=35, image_size=(256, 256),
        classes={1: "LV myocardium", 2: "LV blood pool", 3: "RV"},
        test_classes=(1, 2, 3), supervoxel_min_size=1000,
        # MS-CMRSeg bSSFP: in-plane about 1.25 mm, slices about 8-13 mm.
        label_map={200: 1, 500: 2, 600: 3}, modality="MR", raw_spacing=(1.25, 1.25, 10.0)),
    "Prostate_MRI": DatasetSpec(
        name="Prostate_MRI", folder="prostate_MR_normalized", n_volumes=40, image_size=(256, 256),
        classes={1: "bladder", 2: "bone", 3: "obturator internus", 4: "transition zone",
                 5: "central gland", 6: "rectum", 7: "seminal vesicle",
                 8: "neurovascular bundle"},
        # The literature leaves the test classes to the user. Like CHAOST2 and CMR, every
        # class is evaluated by default; choose a subset with the `test_classes` option.
        test_classes=(1, 2, 3, 4, 5, 6, 7, 8), supervoxel_min_size=5000,
        # Prostate T2-weighted MRI of several institutions: in-plane about 0.4-0.8 mm, slices
        # about 1.5-4 mm.
        modality="MR", raw_spacing=(0.6, 0.6, 3.0)),
    # The project's embedded phantom (fafnet/synthetic/): SABS layout, label ids and groups, a
    # small image size so that it trains on a CPU, and as many volumes as were generated.
    "SYNTHETIC": DatasetSpec(
        name="SYNTHETIC", folder="synthetic_CT_normalized", n_volumes=None, image_size=(129, 129),
        classes=SABS_CLASSES, test_classes=(1, 2, 3, 6), supervoxel_min_size=1000,
        class_groups=SABS_GROUPS),
}


# Setting 2's named protocols (docs/protocol.md section 9): which slices training drops.
SETTING2_PROTOCOLS = ("release", "any", "groups")

# Datasets generated by the project itself: training from a random start is allowed there.
SYNTHETIC_DATASETS = ("SYNTHETIC",)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Look a dataset up by key, with an error that lists the known keys."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"dataset={name!r} is unknown; known datasets: {', '.join(DATASETS)}") from None


def group_classes(dataset: str, group: int) -> Tuple[int, ...]:
    """The classes of group `group` of setting 2's `groups` protocol for `dataset`: the classes
    that training excludes and evaluation tests (SABS: (2, 3), (1, 6); CHAOST2: (2, 3), (1, 4))."""
    return get_dataset_spec(dataset).group_classes(group)
