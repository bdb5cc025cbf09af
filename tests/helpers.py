"""What several test modules share (fixtures are in conftest.py): the phantom dataset written
here, independent of fafnet.synthetic, and the real commands run in-process.

The phantom: 10 volumes of 8 x 65 x 65, so make_folds(10) gives folds of 3 volumes ({0, 1, 2}
for fold 0); organs 1 (spleen) and 6 (liver) are discs on slices 2..5, and the supervoxel files
cut each slice into quadrants, so setting 2 leaves slices 0, 1, 6, 7 for self-supervised
episodes.
"""
import os

import numpy as np

from fafnet.io.nifti import Geometry, write_volume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_VOLUMES, DEPTH, SIZE = 10, 8, 65
ORGAN_SLICES = range(2, 6)
GEOMETRY = Geometry(spacing=(1.25, 1.25, 7.7), origin=(-40.0, -40.0, 10.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
# Four training steps, a snapshot at step 2, a learning-rate milestone at step 2.
TRAINING = {"num_workers": 0, "n_steps": 4, "snapshot_interval": 2, "print_interval": 1, "min_size": 100,
            "lr_step_size": 2, "lr_gamma": 0.5}


def write_phantom(data_dir: str) -> None:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    quadrants = 1 + (rows >= SIZE // 2) * 2 + (cols >= SIZE // 2)
    for index in range(N_VOLUMES):
        image = rng.normal(0.0, 5.0, (DEPTH, SIZE, SIZE)).astype(np.float32) + 100.0
        label = np.zeros((DEPTH, SIZE, SIZE), dtype=np.uint8)
        for class_id, centre, intensity in ((1, (20, 20), 180.0), (6, (42, 40), 240.0)):
            disc = (rows - centre[0] - index % 3) ** 2 + (cols - centre[1]) ** 2 <= 10 ** 2
            for z in ORGAN_SLICES:
                label[z][disc] = class_id
                image[z][disc] += intensity - 100.0
        supervoxels = np.broadcast_to(quadrants, (DEPTH, SIZE, SIZE)).astype(np.int16)
        write_volume(image, GEOMETRY, os.path.join(data_dir, f"image_{index}.nii.gz"))
        write_volume(label, GEOMETRY, os.path.join(data_dir, f"label_{index}.nii.gz"))
        write_volume(supervoxels, GEOMETRY,
                     os.path.join(data_dir, "supervoxels_1000", f"superpix-MIDDLE_{index}.nii.gz"))


def base_config(data_dir: str, runs_dir: str, **updates) -> dict:
    """The options of a run on the phantom (setting 2, classes 1 and 6, on the CPU)."""
    config = {"data_dir": data_dir, "runs_dir": runs_dir, "image_size": [SIZE, SIZE],
              "test_classes": [1, 6], "device": "cpu", "setting": 2, "setting2_protocol": "any"}
    config.update(updates)
    return config


def run_train(config: dict, named_configs=("SYNTHETIC",), config_path=None):
    """train.py's experiment, in this process, with the phantom's training options."""
    from fafnet.cli.train import experiment
    return experiment(config_path).run(named_configs=list(named_configs), config_updates={**TRAINING, **config})


def run_test(config: dict, named_configs=("SYNTHETIC",), config_path=None):
    """test.py's experiment, in this process (support volume 0 of the fold)."""
    from fafnet.cli.evaluate import experiment
    return experiment(config_path).run(named_configs=list(named_configs), config_updates={"supp_idx": 0, **config})


def options_of(command: str, *named_configs: str, config_path=None, **updates) -> dict:
    """The options a run of `command` ("train" or "evaluate") would use (print_config)."""
    from fafnet.cli import evaluate, train
    module = train if command == "train" else evaluate
    return dict(module.experiment(config_path).run("print_config", named_configs=list(named_configs),
                                                   config_updates=updates).config)
