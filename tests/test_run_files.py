"""What runs write and read back: atomic files and their modes, RNG state, devices, the
snapshot format (layout, sizes, resume validation) and run status (experiment.*, fafnet.io.atomic)."""
import datetime
import json
import os
import pickle
import random
import socket
import stat

import numpy as np
import pytest
import torch

from fafnet.io.atomic import atomic_path, atomic_write_json, remove_stale_temporaries
from fafnet.runtime import checkpoints, resume, snapshots
from fafnet.cli.defaults import default_num_workers
from fafnet.runtime.devices import device_type, resolve_device
from fafnet.runtime.rng import capture_rng_state, restore_rng_state, seed_everything
from fafnet.runtime.runs import DIED, run_status


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_file_and_cleans_up_on_failure(tmp_path):
    path = tmp_path / "out" / "results.json"
    atomic_write_json({"a": 1}, str(path))
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            assert tmp.endswith(".json") and os.path.dirname(tmp) == str(path.parent)
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"a": 1}      # the old file is intact
    assert os.listdir(path.parent) == ["results.json"]   # and no temporary is left


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json({}, str(tmp_path / "results.json"))
        with atomic_path(str(tmp_path / "volume.nii.gz")) as tmp:
            open(tmp, "wb").close()
        plain = tmp_path / "plain.txt"
        plain.write_text("")                                      # what open() would give
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("results.json", "volume.nii.gz", "plain.txt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".tmp-abc.pth").write_bytes(b"partial")
    (tmp_path / "latest.pth").write_bytes(b"keep")
    assert remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / ".tmp-abc.pth")]
    assert os.listdir(tmp_path) == ["latest.pth"]


# ----------------------------------------------------------------------------- RNG, devices


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    seed_everything(7)
    state = capture_rng_state()
    path = str(tmp_path / "rng.pth")
    torch.save(state, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)
    restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert device_type("cuda:1") == "cuda" and device_type("cpu") == "cpu"


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 1), (4, 3), (5, 4), (64, 4)])
def test_default_workers_leave_a_core_to_training(cores, workers):
    assert default_num_workers(cores) == workers


# ----------------------------------------------------------------------------- snapshots


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(256, 256)   # large enough that headers do not count


def _training_objects():
    model = _TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.linear.weight.grad = torch.ones_like(model.linear.weight)
    model.linear.bias.grad = torch.ones_like(model.linear.bias)
    optimizer.step()                                  # fills the momentum buffers
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.5)
    return model, optimizer, scheduler


def test_snapshot_layout_latest_full_older_weights_final_named(tmp_path):
    model, optimizer, scheduler = _training_objects()
    run = str(tmp_path)
    writer = snapshots.SnapshotWriter(run, {"n_steps": 6}, (8, 8), keep="weights")
    for step in (2, 4):
        assert writer.save(step, model, optimizer, scheduler) == snapshots.latest_path(run)
    assert writer.save(6, model, optimizer, scheduler, final=True) == snapshots.final_path(run)
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["final.pth", "step_0000002.pth",
                                                                  "step_0000004.pth"]
    weights = torch.load(snapshots.step_path(run, 4), weights_only=True)
    final = torch.load(snapshots.final_path(run), weights_only=True)
    assert weights["kind"] == "weights" and weights["step"] == 4 and "optimizer" not in weights
    assert final["kind"] == "full" and final["step"] == 6 and {"optimizer", "scheduler", "rng"} <= set(final)
    assert final["format"] == snapshots.SNAPSHOT_FORMAT and final["image_size"] == [8, 8]
    # SGD keeps one momentum buffer per parameter: a weights-only file is about half a full one.
    ratio = os.path.getsize(snapshots.step_path(run, 4)) / os.path.getsize(snapshots.final_path(run))
    assert 0.4 < ratio < 0.6
    assert snapshots.newest_snapshot(run) == snapshots.final_path(run)


def test_keep_none_drops_older_snapshots(tmp_path):
    model, optimizer, scheduler = _training_objects()
    writer = snapshots.SnapshotWriter(str(tmp_path), {}, (8, 8), keep="none")
    writer.save(2, model, optimizer, scheduler)
    assert os.listdir(tmp_path / "snapshots") == ["latest.pth"]
    writer.save(4, model, optimizer, scheduler, final=True)
    assert os.listdir(tmp_path / "snapshots") == ["final.pth"]


def _fake_run(runs: str, run_id: int, status: str, names):
    run_dir = os.path.join(runs, str(run_id))
    os.makedirs(os.path.join(run_dir, "snapshots"))
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"status": status}, f)
    for name in names:
        open(os.path.join(run_dir, "snapshots", name), "w").close()
    return run_dir


def test_resolve_checkpoint_file_run_and_runs_folder(tmp_path):
    runs = str(tmp_path / "train")
    first = _fake_run(runs, 1, "COMPLETED", ["step_0000100.pth", "final.pth"])
    second = _fake_run(runs, 2, "COMPLETED", ["step_0000050.pth"])        # a v1 run: steps only
    _fake_run(runs, 10, "FAILED", ["latest.pth"])                      # newer but failed: not chosen
    _fake_run(runs, 11, "COMPLETED", [])                               # no snapshots: not chosen
    assert checkpoints.resolve_checkpoint(first) == snapshots.final_path(first)
    assert checkpoints.resolve_checkpoint(runs) == snapshots.step_path(second, 50)
    file = snapshots.step_path(first, 100)
    assert checkpoints.resolve_checkpoint(file) == file
    with pytest.raises(FileNotFoundError, match="checkpoint=.*no such file or folder"):
        checkpoints.resolve_checkpoint(str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="no completed training run"):
        checkpoints.resolve_checkpoint(str(tmp_path))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["random", "truncated", "text", "malicious", "foreign", "weights-only"])
def test_resume_errors_name_the_option_and_the_file(tmp_path, kind):
    model, optimizer, scheduler = _training_objects()
    path = str(tmp_path / "snapshot.pth")
    if kind in ("truncated", "weights-only"):
        writer = snapshots.SnapshotWriter(str(tmp_path / "run"), {}, (8, 8))
        writer.save(2, model, optimizer, scheduler)
        source = snapshots.latest_path(str(tmp_path / "run")) if kind == "truncated" \
            else snapshots.step_path(str(tmp_path / "run"), 2)
        data = open(source, "rb").read()
        open(path, "wb").write(data[: len(data) // 2] if kind == "truncated" else data)
    elif kind == "random":
        open(path, "wb").write(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        open(path, "w").write("101 dalmatians\n")
    elif kind == "malicious":
        open(path, "wb").write(pickle.dumps(_Payload()))
    else:
        torch.save({"weight": torch.zeros(2)}, path)
    expected = {"weights-only": "weights only", "foreign": "not a training snapshot"}.get(kind, "cannot be read")
    with pytest.raises(snapshots.SnapshotError, match=f"resume=.*{expected}") as error:
        resume.load_for_resume(path)
    assert path in str(error.value)


def test_resume_from_a_killed_run_removes_its_stale_temporary(tmp_path):
    model, optimizer, scheduler = _training_objects()
    run = str(tmp_path / "run")
    snapshots.SnapshotWriter(run, {}, (8, 8)).save(2, model, optimizer, scheduler)
    stale = os.path.join(run, "snapshots", ".tmp-x1y2.pth")
    open(stale, "wb").write(b"\0" * 1000)                  # a snapshot write killed half-way
    path, state = resume.load_for_resume(run)
    assert path == snapshots.latest_path(run) and state["step"] == 2
    assert not os.path.exists(stale)


def test_resume_differences_check_every_option_but_the_declared_free_ones():
    saved = {"lr": 0.1, "n_steps": 100, "new_option": 1, "exclude_rule": "all"}
    now = {"lr": 0.1, "n_steps": 200, "new_option": 2, "setting2_protocol": "release", "optimizer": "sgd"}
    differences = resume.resume_differences(saved, now, frozenset({"n_steps"}))
    # An option nobody declared free is checked (new_option); older snapshots count with
    # what they used (exclude_rule 'all' is the release protocol; optimizer was sgd).
    assert differences == ["new_option: snapshot 1 vs now 2"]


# ----------------------------------------------------------------------------- run status


def _run_json(folder, info=None, **entry):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump(entry, f)
    if info is not None:
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f)
    return str(folder)


def test_killed_runs_show_as_died(tmp_path):
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    recent = (now - datetime.timedelta(seconds=20)).isoformat()
    old = (now - datetime.timedelta(hours=2)).isoformat()
    host = {"hostname": socket.gethostname()}
    alive = _run_json(tmp_path / "1", status="RUNNING", heartbeat=recent, host=host, info={"pid": os.getpid()})
    gone = _run_json(tmp_path / "2", status="RUNNING", heartbeat=recent, host=host, info={"pid": 2 ** 22 + 7})
    silent = _run_json(tmp_path / "3", status="RUNNING", heartbeat=old, host={"hostname": "elsewhere"})
    done = _run_json(tmp_path / "4", status="COMPLETED", heartbeat=old)
    assert run_status(alive, now) == "RUNNING"
    assert run_status(gone, now) == DIED                  # same host, process gone
    assert run_status(silent, now) == DIED                # no heartbeat for two hours
    assert run_status(done, now) == "COMPLETED"
    assert run_status(str(tmp_path / "5")) is None


def test_snapshot_with_non_finite_weights_is_refused_and_the_last_good_one_kept(tmp_path):
    model, optimizer, scheduler = _training_objects()
    run = str(tmp_path)
    writer = snapshots.SnapshotWriter(run, {}, (8, 8))
    writer.save(2, model, optimizer, scheduler)
    good = open(snapshots.latest_path(run), "rb").read()
    with torch.no_grad():
        model.linear.weight[0, 0] = float("inf")
        model.linear.bias[3] = float("nan")
    with pytest.raises(snapshots.NonFiniteWeightsError,
                       match=r"step 4: 2 of 2 tensors \(parameters and buffers\) hold NaN or infinite values"):
        writer.save(4, model, optimizer, scheduler)
    with pytest.raises(snapshots.NonFiniteWeightsError, match="step 6: 2 of 2"):
        writer.save_weights(6, model)
    assert open(snapshots.latest_path(run), "rb").read() == good        # untouched
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["latest.pth", "step_0000002.pth"]


@pytest.mark.parametrize("failure", ["torch", "oserror"])
def test_a_full_disk_is_named_and_the_last_snapshot_survives(tmp_path, monkeypatch, failure):
    import errno
    import shutil
    from collections import namedtuple
    model, optimizer, scheduler = _training_objects()
    run = str(tmp_path)
    writer = snapshots.SnapshotWriter(run, {}, (8, 8))
    writer.save(2, model, optimizer, scheduler)
    good = open(snapshots.latest_path(run), "rb").read()
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)           # a partial temporary, then the failure
        if failure == "torch":                           # what torch's zip writer raises
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 832 vs 730")
        raise OSError(errno.ENOSPC, "No space left on device")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - 4096, 4096))
    with pytest.raises(OSError, match=f"no space left on {os.path.join(run, 'snapshots')}: the snapshot "
                                      f"step_0000004.pth was not written .*the previous snapshot is intact") as error:
        writer.save(4, model, optimizer, scheduler)
    assert error.value.errno == errno.ENOSPC
    assert open(snapshots.latest_path(run), "rb").read() == good
    # No temporary is left; the failed step's weights file does not exist.
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["latest.pth", "step_0000002.pth"]
    if failure == "torch":   # with space to spare, torch's error is not taken for a full disk
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 10 << 30))
        with pytest.raises(RuntimeError, match="unexpected pos"):
            writer.save(4, model, optimizer, scheduler)



def test_a_folder_of_runs_gives_the_newest_completed_run_of_the_evaluated_fold(tmp_path):
    runs = str(tmp_path / "train")

    def run(run_id, status, **config):
        run_dir = _fake_run(runs, run_id, status, ["final.pth"])
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({"dataset": "SABS", "setting": 1, "eval_fold": 0, **config}, f)
        return run_dir

    fold0 = run(1, "COMPLETED")
    fold1 = run(2, "COMPLETED", eval_fold=1)
    run(3, "FAILED")                                       # newer, fold 0, but failed
    run(4, "COMPLETED", setting=2)                         # newer, fold 0, but setting 2
    wanted = {"dataset": "SABS", "eval_fold": 0, "setting": 1}
    assert checkpoints.resolve_checkpoint(runs, wanted=wanted) == snapshots.final_path(fold0)
    assert checkpoints.resolve_checkpoint(runs, wanted={**wanted, "eval_fold": 1}) == snapshots.final_path(fold1)
    with pytest.raises(FileNotFoundError, match=r"checkpoint='.*train': no completed training run with "
                                                r"dataset='SABS', eval_fold=4, setting=1 in it; found: run 4 "
                                                r"\(dataset='SABS', eval_fold=0, setting=2, COMPLETED\); run 3 "):
        checkpoints.resolve_checkpoint(runs, wanted={**wanted, "eval_fold": 4})


def test_resume_data_differences_name_the_first_differing_files():
    from fafnet.runtime.training_data import describe_differences, resume_data_differences
    saved = {"files": [{"name": "image_3.nii.gz", "sha256": "a" * 64}, {"name": "image_4.nii.gz", "sha256": "b" * 64},
                       {"name": "supervoxels_1000/superpix-MIDDLE_3.nii.gz", "sha256": "c" * 64}]}
    assert resume_data_differences(saved, saved) == []
    now = {"files": [{"name": "image_3.nii.gz", "sha256": "d" * 64}, {"name": "image_5.nii.gz", "sha256": "b" * 64},
                     {"name": "supervoxels_1000/superpix-MIDDLE_3.nii.gz", "sha256": "c" * 64}]}
    differences = resume_data_differences(saved, now)
    assert differences == [f"image_3.nii.gz has another sha256 (snapshot {'a' * 12}... vs now {'d' * 12}...)",
                           "image_5.nii.gz was not in the snapshot's training data",
                           "image_4.nii.gz of the snapshot's training data is not read now"]
    assert describe_differences(differences * 2).endswith("; and 3 more")


def test_run_start_records_the_pid_before_sacreds_first_heartbeat(tmp_path):
    from fafnet.runtime.runs import record_process
    host = {"hostname": socket.gethostname()}
    run = _run_json(tmp_path / "1", status="RUNNING", start_time=datetime.datetime.utcnow().isoformat(),
                    heartbeat=None, host=host)
    record_process(run, {"pid": 2 ** 22 + 11})             # a process that is gone
    assert json.load(open(os.path.join(run, "info.json"))) == {"pid": 2 ** 22 + 11}
    assert run_status(run) == DIED                          # at once, not after DEAD_AFTER_S
