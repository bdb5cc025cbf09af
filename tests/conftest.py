"""Fixtures shared by the test modules: the phantom dataset (tests/helpers.py) and one short
training run on it, each made once per session."""
import pytest

from tests.helpers import base_config, run_train, write_phantom


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """The phantom's folder (10 volumes, supervoxels_1000/ inside)."""
    data_dir = str(tmp_path_factory.mktemp("phantom"))
    write_phantom(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def straight_run(phantom, tmp_path_factory):
    """An uninterrupted 4-step FAF-Net training run on the phantom (snapshots at steps 2 and 4):
    (the Sacred run, its runs_dir)."""
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    run = run_train(base_config(phantom, runs_dir))
    return run, runs_dir
