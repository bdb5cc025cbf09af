"""The `dataset` ingredient: which pre-processed dataset, its grid, the fold and the setting.

    python train.py with CHAOST2 dataset.eval_fold=1          # (or the flat name: eval_fold=1)

Everything that follows from the dataset (its folder, image size, test classes) is computed
here, so config.json records the values a run used."""
import os
from typing import Mapping

from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import FOLDER, positive_int, size_ok
from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.datasets import SETTING2_PROTOCOLS

dataset = new_ingredient("dataset")


def spec(name: str):
    """The dataset's facts (`get_dataset_spec`), its unknown-key error as a ValueError (an
    option error of the command line) with the named configs' hint."""
    try:
        return get_dataset_spec(name)
    except KeyError as err:
        raise ValueError(f"{err.args[0]} (named configs of the same names set them up)") from None


def class_groups(name: str):
    """The two class groups of the `groups` protocol of setting 2 (empty when the dataset
    defines none)."""
    return tuple(tuple(g) for g in spec(name).class_groups or ())


def dataset_options():
    """The dataset's options (a Sacred config scope; comments show in print_config)."""
    name = "SABS"                   # SABS, CHAOST2, CMR, Prostate_MRI or SYNTHETIC (named configs too)
    data_root = "./data_processed"  # pre-processed datasets live in <data_root>/<dataset folder>
    data_dir = os.path.join(data_root, spec(name).folder) if isinstance(data_root, str) else None  # this dataset's folder
    # [H, W]: resample every volume in-plane to this grid when it is loaded, for training and
    # evaluation alike (images linear, labels and supervoxels nearest; Dice is then computed
    # on this grid). None: volumes are used as stored (the release).
    resample_in_plane = None
    image_size = list(resample_in_plane or spec(name).image_size)  # [H, W] the network sees
    n_volumes = None                # None: the dataset's known count (30/20/35/40; SYNTHETIC: any), checked;
                                    # a number: the folds are made for that many volumes
    eval_fold = 0                   # 0..4: the fold held out for evaluation
    setting = 1                     # 1: test organs may appear in training; 2: their slices removed
    setting2_protocol = "release"   # setting 2: release (AND rule) | any | groups (Ouyang et al.)
    group = None                    # groups protocol: 0 or 1, the class group held out and tested
    test_classes = list(class_groups(name)[group]
                        if setting == 2 and setting2_protocol == "groups" and group in range(len(class_groups(name)))
                        else spec(name).test_classes)  # the dataset's, or the group's (groups protocol)


dataset.config(dataset_options)

CHECKS = {
    "data_root": FOLDER, "data_dir": FOLDER,
    "eval_fold": (lambda v: v in range(5), "must be 0, 1, 2, 3 or 4"),
    "setting": (lambda v: v in (1, 2), "must be 1 or 2"),
    "setting2_protocol": (lambda v: v in SETTING2_PROTOCOLS, f"must be one of {', '.join(SETTING2_PROTOCOLS)}"),
    "group": (lambda v: v is None or v in (0, 1), "must be None, 0 or 1"),
    "n_volumes": (lambda v: v is None or positive_int(v), "must be None or an integer >= 1"),
    "image_size": (size_ok, "must be [H, W] with positive integers"),
    "resample_in_plane": (lambda v: v is None or size_ok(v), "must be None or [H, W] with positive integers"),
    "test_classes": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(positive_int(c) for c in v),
                     "must be a non-empty list of positive class ids"),
}


def check_dataset_rules(options: Mapping) -> None:
    """The dataset's rules across options (each option's own value: CHECKS)."""
    if options["resample_in_plane"] and list(options["resample_in_plane"]) != list(options["image_size"]):
        raise ValueError(f"config option dataset.image_size={list(options['image_size'])} differs from "
                         f"dataset.resample_in_plane={list(options['resample_in_plane'])}: the network sees "
                         "the resampled grid (leave image_size unset)")
    if options["setting"] == 2 and options["setting2_protocol"] == "groups":
        try:   # the rule's one owner: DatasetSpec.group_classes
            spec(options["name"]).group_classes(options["group"])
        except ValueError as err:
            raise ValueError(f"config option dataset.group={options['group']!r}: {err}") from None


validate_on_assembly(dataset, CHECKS, check_dataset_rules)
