"""The `episodes` ingredient (train.py): how training episodes are drawn from the fold's
training volumes (self-supervised supervoxels or ground truth, shots, augmentation)."""
from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import NON_NEGATIVE_INT, POSITIVE, booleans
from fafnet.cli.ingredients.dataset import dataset, spec

episodes = new_ingredient("episodes", ingredients=[dataset])


def episode_options(dataset):
    """Episode sampling (a Sacred config scope; `dataset` is that ingredient's config)."""
    n_shot = 1
    use_gt = False                  # False: supervoxel episodes (self-supervised); True: ground truth
    supervoxel_min_size = spec(dataset["name"]).supervoxel_min_size  # which supervoxels_<N> folder
    min_size = 200                  # min foreground pixels of an episode's first two slices
    augment = True
    max_iters_per_load = 3000       # episodes per "epoch" of the training dataset


episodes.config(episode_options)

CHECKS = {
    "n_shot": POSITIVE, "max_iters_per_load": POSITIVE, "supervoxel_min_size": POSITIVE,
    "min_size": NON_NEGATIVE_INT,
    **booleans("use_gt", "augment"),
}

validate_on_assembly(episodes, CHECKS)
