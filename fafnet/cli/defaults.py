"""What the root config.py derives its defaults from, without importing torch: a dataset's
folder, image size, test classes and supervoxel size, the pretrained file in torchvision's
cache, the number of data-loading workers. An unknown dataset gives neutral values here, so
that the config's check (fafnet/runtime/options.py) is the one to name it."""
import os
from typing import List, Optional

from fafnet.datasets.specs import DATASETS
from fafnet.io.weights import cached_pretrained_weights  # noqa: F401  (config.py's default)


def _known(dataset) -> bool:
    return isinstance(dataset, str) and dataset in DATASETS


def dataset_dir(data_root, dataset) -> str:
    """<data_root>/<the dataset's pre-processed folder> (an unknown dataset: its own name)."""
    folder = DATASETS[dataset].folder if _known(dataset) else str(dataset)
    return os.path.join(data_root, folder) if isinstance(data_root, str) else folder


def dataset_image_size(dataset) -> Optional[List[int]]:
    """[H, W] the network sees for the dataset after its pre-processing."""
    return list(DATASETS[dataset].image_size) if _known(dataset) else None


def dataset_supervoxel_min_size(dataset) -> Optional[int]:
    """The supervoxel minimum size whose folder (supervoxels_<N>) training reads."""
    return DATASETS[dataset].supervoxel_min_size if _known(dataset) else None


def dataset_test_classes(dataset, setting, setting2_protocol, group) -> List[int]:
    """The classes evaluated: the dataset's, or in setting 2's groups protocol the group's."""
    if not _known(dataset):
        return []
    spec = DATASETS[dataset]
    groups = spec.class_groups or ()
    if setting == 2 and setting2_protocol == "groups" and group in range(len(groups)) and not isinstance(group, bool):
        return list(groups[group])
    return list(spec.test_classes)


def default_num_workers(cpu_count: Optional[int] = None) -> int:
    """Data-loading worker processes: one core stays with the training process, at most 4
    workers (an episode takes about 2 ms to build, so 4 keep up with any GPU step); 0 (load in
    the main process) on a single core."""
    if cpu_count is None:
        # The cores this process may run on (a container or a batch job may grant fewer).
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cpu_count or 1) - 1))
