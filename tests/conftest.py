"""Fixtures shared by the test modules, each made once per session: the phantom dataset
(tests/helpers.py), one short training run on it and one evaluation of that run; and, for
every test, the console log handler of the commands removed after it."""
import logging
import os

import pytest

from fafnet.io.progress import PROJECT_LOGGER
from tests.helpers import base_config, run_test, run_train, write_phantom


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


@pytest.fixture(scope="session")
def evaluation(straight_run, phantom):
    """test.py on `straight_run`, picked from its folder of training runs, with
    eval_batch_size=2 and every output: (the Sacred run, its run folder)."""
    _, runs_dir = straight_run
    run = run_test(base_config(phantom, runs_dir, checkpoint=os.path.join(runs_dir, "train"), eval_batch_size=2))
    return run, run.observers[0].dir



@pytest.fixture(autouse=True)
def console_log_ends_with_its_test():
    """A command's main (segment, the pre-processing and supervoxel CLIs) adds a log handler on
    the sys.stderr of the moment (fafnet.io.progress.log_to_console), which in a test is that
    test's captured stream: closed after it, it would print "--- Logging error ---" tracebacks
    into later tests' stderr. Each test's handler goes with the test."""
    yield
    logger = logging.getLogger(PROJECT_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "_fafnet_console", False)]:
        logger.removeHandler(handler)
