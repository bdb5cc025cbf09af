"""A run's life past the happy path (issue 28, "What a first run on another real dataset trips
on"): the first step is logged whatever print_interval says; Ctrl-C or SIGTERM lets the step
under way finish, saves it and prints advice that works (for an evaluation: run it again, its
folder marked partial); a resumed run is linked both ways to the run it continues and the
tools follow the link; a checkpoint of a run that never finished says so; data-loading
workers run OpenCV on one thread and leave the signals to the training process.

The runs are the phantom's 4-step FAF-Net run (tests/conftest.py's `straight_run`), stopped by
a SIGTERM the patched training step sends itself, then resumed.
"""
import contextlib
import io
import json
import os
import shutil
import signal

import pytest
import torch

from fafnet.runtime import runs
from fafnet.runtime.checkpoints import resolve_checkpoint
from fafnet.runtime.snapshots import final_path, latest_path
from fafnet.training import loop as training_loop
from tests.helpers import TRAINING, base_config, run_test, run_train


def _argv(command: str, values: dict) -> list:
    return [command, "with", "SYNTHETIC"] + [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                                            for k, v in values.items()]


def _run_cli(module, argv):
    """A command line in this process: (exit status, its last line on stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_code:
        module.cli(argv)
    return exit_code.value.code, stderr.getvalue().strip().splitlines()[-1]


@contextlib.contextmanager
def _sigterm_in_step(step_number: int, count: int, before: bool):
    """Training step `step_number` sends this process `count` SIGTERMs, before or after its
    update (two before it: the second stops the run at once, the step unfinished)."""
    original = training_loop.TrainingLoop.train_step

    def patched(self, episode, step):
        if step == step_number and before:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGTERM)
        losses = original(self, episode, step)
        if step == step_number and not before:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGTERM)
        return losses

    training_loop.TrainingLoop.train_step = patched
    try:
        yield
    finally:
        training_loop.TrainingLoop.train_step = original


def _train_cli(data_dir: str, runs_dir: str, **options):
    from fafnet.cli import train
    return _run_cli(train, _argv("train.py", {**TRAINING, **base_config(data_dir, runs_dir), **options}))


@pytest.fixture(scope="module")
def interrupted(phantom, tmp_path_factory):
    """train.py (in this process) sent SIGTERM during step 1 of 4, before any snapshot, logging
    every 100 steps: (exit status, last stderr line, run folder, runs_dir)."""
    runs_dir = str(tmp_path_factory.mktemp("runs_stopped"))
    with _sigterm_in_step(1, 1, before=False):
        status, last = _train_cli(phantom, runs_dir, print_interval=100)
    return status, last, os.path.join(runs_dir, "train", "1"), runs_dir


@pytest.fixture(scope="module")
def resumed(interrupted, phantom):
    """The interrupted run resumed (data-loading workers on), in the same runs folder."""
    _, _, run_dir, runs_dir = interrupted
    return run_train(base_config(phantom, runs_dir, resume=run_dir, num_workers=2))


def _state(path: str) -> dict:
    return torch.load(path, weights_only=True)


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- 1. the first step


def test_the_first_step_is_logged_whatever_print_interval(interrupted):
    _, _, run_dir, _ = interrupted
    log = open(os.path.join(run_dir, "train.log"), encoding="utf-8").read()
    line = next((line for line in log.splitlines() if " step 1/4: loss " in line), None)
    assert line is not None, log
    assert "(the first step, with start-up)" in line and "for the run's 4 steps" in line and " left" in line


# ----------------------------------------------------------------------------- 2. stopping and resuming


def test_a_stopped_run_saves_the_step_it_finished_and_says_how_to_continue(interrupted):
    status, last, run_dir, _ = interrupted
    assert status == 143
    assert last == (f"train.py: terminated (SIGTERM); the run is recorded as INTERRUPTED; step 1 of 4 is "
                    f"saved in {latest_path(run_dir)}: continue the run with resume={run_dir}")
    assert _json(os.path.join(run_dir, "run.json"))["status"] == "INTERRUPTED"
    assert os.listdir(os.path.join(run_dir, "snapshots")) == ["latest.pth"]   # no step file off the interval
    state = _state(latest_path(run_dir))
    assert (state["kind"], state["step"]) == ("full", 1)
    # The losses of the step since the last logged one are logged and recorded.
    assert _json(os.path.join(run_dir, "metrics.json"))["loss"]["steps"] == [1]


def test_resuming_a_stopped_run_reaches_the_straight_runs_weights(resumed, straight_run):
    straight, _ = straight_run
    assert resumed.info["start_step"] == 1
    expected, got = _state(final_path(straight.observers[0].dir)), _state(resumed.result)
    assert got["step"] == expected["step"] == 4
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    for key, value in expected["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert got["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"] == 4


def test_a_run_stopped_before_any_step_is_saved_says_start_again(phantom, tmp_path):
    # Two signals: the second stops the run at once, inside step 1, so nothing is saved.
    runs_dir = str(tmp_path)
    with _sigterm_in_step(1, 2, before=True):
        status, last = _train_cli(phantom, runs_dir)
    run_dir = os.path.join(runs_dir, "train", "1")
    assert status == 143
    assert last.startswith("train.py: terminated (SIGTERM); the run is recorded as INTERRUPTED; no training step "
                           "was saved")
    assert last.endswith("so it cannot be resumed: start it again")
    assert not os.path.exists(os.path.join(run_dir, "snapshots", "latest.pth"))


def test_a_stopped_evaluation_says_run_it_again_and_marks_its_folder_partial(phantom, tmp_path, monkeypatch):
    from fafnet.cli import evaluate
    from fafnet.evaluation import protocol
    original = protocol.segment_query

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(protocol, "segment_query", stopped)
    status, last = _run_cli(evaluate, _argv("test.py", {**base_config(phantom, str(tmp_path)),
                                                       "checkpoint": "untrained", "supp_idx": 0}))
    run_dir = os.path.join(str(tmp_path), "test", "1")
    assert status == 143
    assert last == "test.py: terminated (SIGTERM); the run is recorded as INTERRUPTED" + protocol.EVALUATION_ADVICE
    assert "an evaluation cannot be resumed: run it again" in last
    partial = _json(os.path.join(run_dir, protocol.PARTIAL_NAME))
    assert partial["partial"] is True and partial["stopped_by"] == "SIGTERM"
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    assert _json(os.path.join(run_dir, "run.json"))["status"] == "INTERRUPTED"


def test_signals_are_deferred_to_the_end_of_the_step_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with runs.deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and type(stop.interrupt()) is KeyboardInterrupt
        with pytest.raises(runs.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before   # handlers back


# ----------------------------------------------------------------------------- 3. one run in two folders


def test_a_resumed_run_is_linked_both_ways_and_followed_as_one_run(interrupted, resumed, caplog):
    _, _, old, _ = interrupted
    new = resumed.observers[0].dir
    record = _json(os.path.join(old, runs.CONTINUATION_NAME))
    assert record["continued_in"] == os.path.abspath(new) and record["from_step"] == 1
    assert record["from_snapshot"] == os.path.abspath(latest_path(old))
    assert os.path.samefile(runs.continuation(old), new) and len(runs.continuations(old)) == 1
    assert runs.continuation(new) is None
    assert os.path.samefile(runs.resumed_from(new), old)
    with caplog.at_level("INFO", logger="fafnet"):
        assert resolve_checkpoint(old) == final_path(new)
    assert f"continued in {new}" in caplog.text
    # The continuation's curves carry the whole run: step 1 logged by the old run, 2-4 by itself.
    assert _json(os.path.join(new, "metrics.json"))["loss"]["steps"] == [1, 2, 3, 4]


def test_a_link_survives_moving_the_runs_folder(tmp_path):
    first, second = tmp_path / "runs" / "1", tmp_path / "runs" / "2"
    for folder in (first, second):
        folder.mkdir(parents=True)
    runs.record_continuation(str(first), str(second), str(first / "snapshots" / "latest.pth"), 5)
    shutil.move(str(tmp_path / "runs"), str(tmp_path / "moved"))
    assert runs.continuation(str(tmp_path / "moved" / "1")) == str(tmp_path / "moved" / "2")
    assert runs.continuation(str(tmp_path / "moved" / "2")) is None


# ----------------------------------------------------------------------------- 4. an unfinished run as a checkpoint


def test_an_unfinished_run_used_as_a_checkpoint_is_named_so(interrupted, phantom, tmp_path):
    from fafnet.inference.segment import read_training_checkpoint
    _, _, old, _ = interrupted
    copy = str(tmp_path / "stopped_run")      # the run as it was before it was resumed
    shutil.copytree(old, copy)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(copy, runs.CONTINUATION_NAME))
    checkpoint = read_training_checkpoint(copy)
    assert len(checkpoint.warnings) == 1 and "never finished (status INTERRUPTED)" in checkpoint.warnings[0]
    assert checkpoint.record()["warnings"] == checkpoint.warnings
    run = run_test(base_config(phantom, str(tmp_path / "runs"), checkpoint=copy, test_classes=[1],
                               save_predictions=False, save_figures=False))
    warnings = _json(os.path.join(run.observers[0].dir, "results.json"))["warnings"]
    assert warnings == checkpoint.warnings
    assert "weights of step 1 of n_steps=4, not of the finished run" in warnings[0]
    assert warnings[0] in open(os.path.join(run.observers[0].dir, "test.log"), encoding="utf-8").read()


def test_a_finished_run_used_as_a_checkpoint_has_no_warning(straight_run):
    from fafnet.inference.segment import read_training_checkpoint
    straight, _ = straight_run
    assert read_training_checkpoint(straight.observers[0].dir).warnings == []


# ----------------------------------------------------------------------------- 5. threads


class _WorkerProbe(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        import cv2
        return {"opencv_threads": cv2.getNumThreads(),
                "ignores_ctrl_c": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                "ignores_sigterm": signal.getsignal(signal.SIGTERM) is signal.SIG_IGN}


def test_data_loading_workers_run_opencv_on_one_thread_and_leave_signals_to_training():
    loader = training_loop.make_loader(_WorkerProbe(), 0, {"n_steps": 4, "num_workers": 2, "seed": 0},
                                       torch.device("cpu"))
    assert list(loader) == [{"opencv_threads": 1, "ignores_ctrl_c": True, "ignores_sigterm": True}] * 4


def test_a_training_run_records_its_cpu_threads(interrupted, resumed):
    _, _, old, _ = interrupted
    assert _json(os.path.join(old, "info.json"))["num_threads"] == torch.get_num_threads()
    assert resumed.info["num_threads"] == torch.get_num_threads()
