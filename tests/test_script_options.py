"""The shell scripts pass options the experiments accept.

Each script runs with a stand-in python that records its calls; every recorded `train.py` or
`test.py` call is then checked by the real experiment (`print_config`), which refuses an option
the experiment does not declare ("Added new config entry that is not used anywhere"). This
catches a script passing a training-only option to the evaluation, or a renamed option.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECORDING_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records each call (one argument per line, calls separated by a line
# holding only ---) and leaves the run folders the scripts look for.
printf '%s\\n' "$@" --- >> "$CALLS"
for a in "$@"; do
    [[ "$a" == runs_dir=* && "$1" == train.py ]] && mkdir -p "${a#runs_dir=}/train/1"
    [[ "$a" == runs_dir=* && "$1" == test.py ]] && mkdir -p "${a#runs_dir=}/test/1"
done
exit 0
"""


def recorded_experiment_calls(script, tmp_path, **env):
    """Run script/<script> with the recording python; return the argument lists of its
    train.py and test.py calls."""
    fake = tmp_path / "python"
    fake.write_text(RECORDING_PYTHON)
    fake.chmod(0o755)
    calls_file = tmp_path / "calls.txt"
    environment = dict(os.environ, PYTHON=str(fake), CALLS=str(calls_file),
                       RUNS_ROOT=str(tmp_path / "runs"), DEMO_DIR=str(tmp_path / "demo"),
                       OUT=str(tmp_path / "out"), **env)
    result = subprocess.run(["bash", os.path.join(ROOT, "script", script)], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls, current = [], []
    for line in calls_file.read_text().splitlines():
        if line == "---":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return [call for call in calls if call and call[0] in ("train.py", "test.py")]


def assert_experiment_accepts(call):
    script, with_word, *options = call
    assert with_word == "with", call
    result = subprocess.run([sys.executable, script, "print_config", "with", *options], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{script} refused the options {options}:\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("script, env, expected", [
    ("demo.sh", {}, ["train.py", "test.py", "test.py"]),
    ("train.sh", {"FOLDS": "0", "DATASET": "SYNTHETIC"}, ["train.py"]),
    ("train.sh", {"FOLDS": "0", "SETTING": "2", "PROTOCOL": "groups", "DATASET": "SYNTHETIC"},
     ["train.py", "train.py"]),
    ("evaluate.sh", {"FOLDS": "0", "DATASET": "SYNTHETIC", "SUPP_IDX": "0 1"}, ["test.py"]),
    # Without snapshots on disk the glob stays a pattern: one evaluation for it, one for final.pth.
    ("real_cmr.sh", {"DATA_ROOT": "/data/CMR"}, ["train.py", "test.py", "test.py"]),
    ("real_cmr.sh", {"DATA_ROOT": "/data/CMR", "SIZE": "none", "EXTRA": "amp_bf16=True",
                     "TRAIN_EXTRA": "cuda_graph=True channels_last=True"}, ["train.py", "test.py", "test.py"]),
])
def test_scripts_pass_only_options_the_experiments_declare(script, env, expected, tmp_path):
    calls = recorded_experiment_calls(script, tmp_path, **env)
    assert [call[0] for call in calls] == expected
    for call in calls:
        assert_experiment_accepts(call)


def test_an_undeclared_option_is_refused_by_the_check(tmp_path):
    # The check itself: the evaluation does not declare a training-only option.
    with pytest.raises(AssertionError, match="supervoxel_min_size"):
        assert_experiment_accepts(["test.py", "with", "SYNTHETIC", "supervoxel_min_size=200"])


@pytest.mark.parametrize("script, env", [("demo.sh", {}), ("real_cmr.sh", {"DATA_ROOT": "/data/CMR"})])
def test_random_start_options_follow_random_start_and_pretrained(script, env, tmp_path):
    demo_options = {"zero_init_residual=True", "threshold_head_init_scale=0.05"}
    for case, (extra, expected) in enumerate((({}, True), ({"RANDOM_START": "release"}, False),
                                              ({"PRETRAINED": "/weights.pth"}, False))):
        folder = tmp_path / str(case)
        folder.mkdir()
        calls = recorded_experiment_calls(script, folder, **env, **extra)
        train = next(call for call in calls if call[0] == "train.py")
        assert (demo_options <= set(train)) is expected, (extra, train)
