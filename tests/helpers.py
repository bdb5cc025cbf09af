"""What several test modules share (fixtures are in conftest.py): the phantom dataset written
here, independent of fafnet.synthetic, and the real commands run in-process.

The phantom: 10 volumes of 8 x 33 x 33 (the smallest images FAF-Net's tests need: 9 x 9
feature maps; every run on it trains and evaluates a ResNet-101), so make_folds(10) gives
folds of 3 volumes ({0, 1, 2} for fold 0); organs 1 (spleen) and 6 (liver) are discs of
radius 5 on slices 2..5, and the supervoxel files cut each slice into quadrants (16 x 16 pixels
and more), so setting 2 leaves slices 0, 1, 6, 7 for self-supervised episodes.
"""
import functools
import os

import numpy as np

from fafnet.io.nifti import Geometry, write_volume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_VOLUMES, DEPTH, SIZE = 10, 8, 33
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
        for class_id, centre, intensity in ((1, (10, 10), 180.0), (6, (21, 20), 240.0)):
            disc = (rows - centre[0] - index % 3) ** 2 + (cols - centre[1]) ** 2 <= 5 ** 2
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


def experiment_for(command: str, config_path=None):
    """A train ("train") or test.py ("evaluate") experiment for print_config and for options
    refused before a run starts: one per config file (its path, size and modification time),
    kept for the session, since building one gathers the sources and git state of every
    imported module (about a second). Runs that train or evaluate use fresh experiments
    (run_train, run_test), as the commands do."""
    from fafnet.cli.experiment import config_file
    path = os.path.abspath(config_path or config_file())
    stat = os.stat(path)
    experiment = _cached_experiment(command, path, stat.st_mtime_ns, stat.st_size)
    experiment.observers[:] = []   # a run that got past the checks recorded itself; print_config never does
    return experiment


@functools.lru_cache(maxsize=None)
def _cached_experiment(command: str, path: str, mtime_ns: int, size: int):
    from fafnet.cli import evaluate, train
    return (train if command == "train" else evaluate).experiment(path)


def options_of(command: str, *named_configs: str, config_path=None, **updates) -> dict:
    """The options a run of `command` ("train" or "evaluate") would use (print_config)."""
    return dict(experiment_for(command, config_path).run("print_config", named_configs=list(named_configs),
                                                         config_updates=updates).config)


def command_line(module, *words, capsys=None, fresh=True):
    """`module`'s command line (fafnet.cli.train or fafnet.cli.evaluate) run in this process
    with `words`: (exit status, stdout, stderr) when `capsys` is given, else the exit status.
    fresh=False: the session's experiment (`experiment_for`), for print_config and for
    options refused before a run starts."""
    from fafnet.cli.experiment import run_commandline
    command = module.__name__.split(".")[-1]
    program = "test.py" if command == "evaluate" else f"{command}.py"
    experiment = module.experiment() if fresh else experiment_for(command)
    try:
        run_commandline(experiment, [program, *map(str, words)], module.ENGINE)
        status = 0
    except SystemExit as exit:
        status = exit.code
    if capsys is None:
        return status
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def model_state(path: str) -> dict:
    """A snapshot file's contents (torch.load, weights only)."""
    import torch
    return torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- shell scripts

def run_script(name: str, tmp_path, fake_python: str, **env):
    """bash script/<name> with `fake_python` (a bash script text) standing in for python:
    (the finished process, the lines the stand-in wrote to $CALLS). A `python -c` call, as
    script/lib.sh's config_value makes, runs the real python."""
    import subprocess
    import sys
    assert fake_python.startswith("#!/usr/bin/env bash\n")
    fake = tmp_path / "fake_python"
    fake.write_text(fake_python.replace("#!/usr/bin/env bash\n", "#!/usr/bin/env bash\n"
                                        '[[ "${1:-}" == -c ]] && exec "$REAL_PYTHON" "$@"\n', 1))
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    environment = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, CALLS=str(calls),
                       RUNS_ROOT=str(tmp_path / "runs"), **env)
    result = subprocess.run(["bash", os.path.join(ROOT, "script", name)], env=environment, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    return result, calls.read_text().splitlines() if calls.exists() else []


# ----------------------------------------------------------------------------- damaged files, DICOM, CHAOS

def truncate(path, n_bytes: int) -> int:
    """Keep the first `n_bytes` of the file `path` (fewer than it has); its former size."""
    with open(path, "rb") as f:
        data = f.read()
    assert n_bytes < len(data), "the test file must be larger than what is kept"
    with open(path, "wb") as f:
        f.write(data[:n_bytes])
    return len(data)


def write_dicom_series(volume, folder, spacing_xy, slice_gap, names):
    """Write (z, rows, cols) uint16 `volume` as one DICOM series: slice i to file names[i],
    at height slice_gap * i."""
    import SimpleITK as sitk
    os.makedirs(folder, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.7"
    for i, name in enumerate(names):
        image = sitk.GetImageFromArray(volume[i])
        image.SetSpacing(spacing_xy)
        tags = {
            "0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY",
            "0020|000d": uid + ".1", "0020|000e": uid + ".2", "0008|0018": f"{uid}.3.{i + 1}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": f"-50\\-40\\{slice_gap * i:.4f}",
            "0020|0013": str(names.index(name) + 1), "0018|0050": str(slice_gap),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, name))
        writer.Execute(image)


CHAOS_ROWS, CHAOS_COLS, CHAOS_SLICES = 64, 80, 5
CHAOS_GREYS = (63, 126, 189, 252, 63)   # the organ marked in file k (1-based: file k -> index k-1)


def write_chaos_patient(root, patient_id, intensity_scale=1.0, grey_override=None):
    """A CHAOS T2-SPIR patient in its raw layout under `root` (a pathlib.Path). Slice i
    (bottom to top) holds one organ box, with grey CHAOS_GREYS[i], at a position and an MR
    intensity that both depend on i. File names run top to bottom, so file order and slice
    order are reversed."""
    import cv2
    volume = np.full((CHAOS_SLICES, CHAOS_ROWS, CHAOS_COLS), 40, dtype=np.uint16)
    masks = np.zeros(volume.shape, dtype=np.uint8)
    for i in range(CHAOS_SLICES):
        r0, c0 = 6 + 5 * i, 10 + 8 * i
        volume[i, r0:r0 + 16, c0:c0 + 20] = int((300 + 100 * i) * intensity_scale)
        masks[i, r0:r0 + 16, c0:c0 + 20] = CHAOS_GREYS[i]
    volume[2, 60, 2] = 60000              # one off-resonance outlier, removed by the clipping
    names = [f"IMG-0002-{CHAOS_SLICES - i:05d}" for i in range(CHAOS_SLICES)]  # top-down names
    t2 = root / str(patient_id) / "T2SPIR"
    write_dicom_series(volume, str(t2 / "DICOM_anon"), (1.5, 1.4), 7.7, [n + ".dcm" for n in names])
    os.makedirs(t2 / "Ground", exist_ok=True)
    for i, name in enumerate(names):
        mask = masks[i] if grey_override is None or i != 3 else np.where(masks[i], grey_override, 0)
        cv2.imwrite(str(t2 / "Ground" / f"{name}.png"), mask.astype(np.uint8))
    return volume
