#!/usr/bin/env bash
# Train FAF-Net on every fold, like the authors' training script (SABS, setting 1 by default).
#
#   script/train.sh                                    # SABS, setting 1, 5 folds, config defaults
#   DATASET=SABS SETTING=2 script/train.sh             # setting 2, the release's protocol
#   DATASET=CHAOST2 SETTING=2 PROTOCOL=groups script/train.sh   # two trainings per fold (Ouyang et al.)
#   GPUS=0,1,2,3 DATASET=CHAOST2 script/train.sh       # one fold per GPU, in parallel
#   DATASET=SYNTHETIC STEPS=20 EXTRA="optimizer=adam lr=1e-4" script/train.sh   # the phantom
#
# Environment (default in brackets):
#   DATASET [config.py's dataset, SABS]  SABS, CHAOST2, CMR, Prostate_MRI or SYNTHETIC
#   SETTING [1]          1 or 2 (docs/protocol.md)
#   PROTOCOL [release]   setting 2 only: release, any or groups (groups: both class groups
#                        are trained, one after the other, in fold<k>/group<g>/)
#   FOLDS [config.py's folds, 0 1 2 3 4]  folds to train, space-separated
#   STEPS, SNAPSHOT      n_steps and snapshot_interval [config defaults: 42000, 6000]
#   DEVICE [auto]        auto, cpu, cuda, mps (with GPUS: cuda)
#   GPUS []              comma-separated GPU ids; with two or more, folds run in parallel,
#                        fold i on GPU number (i mod #GPUS); otherwise folds run one by one
#   DATA_ROOT [./data_processed]  RUNS_ROOT [runs]  PYTHON [.venv/bin/python or python3]
#   EXTRA []             more Sacred options, e.g. "pretrained_weights=PATH num_workers=8"
#
# Fold k is recorded in $RUNS_ROOT/<DATASET>_setting1/fold<k>/train/<id>/ (setting 2:
# <DATASET>_setting2_<PROTOCOL>/) with its console output in .../fold<k>/train.out. A second
# script on the same fold is refused while the first runs. A failing fold does not stop the
# others; the script then exits with status 1 and names the failed folds.
set -euo pipefail
cd "$(dirname "$0")/.."

source script/lib.sh
fold_environment

# train_unit FOLD DEVICE GROUP: one Sacred training run; output to the console and the unit's log.
train_unit() {
    local fold=$1 device=$2 group=$3 dir
    dir=$(unit_dir "$fold" "$group")
    local args=("dataset=$DATASET" "${PROTOCOL_ARGS[@]}" "eval_fold=$fold" "device=$device"
                "data_root=$DATA_ROOT" "runs_dir=$dir")
    [[ -n "$group" ]] && args+=("group=$group")
    [[ -n "${STEPS:-}" ]] && args+=("n_steps=$STEPS")
    [[ -n "${SNAPSHOT:-}" ]] && args+=("snapshot_interval=$SNAPSHOT")
    # shellcheck disable=SC2206  # EXTRA is a list of words on purpose
    args+=($EXTRA)
    echo "[train.sh] fold $fold${group:+ group $group}: $PYTHON train.py with ${args[*]}"
    "$PYTHON" train.py with "${args[@]}" 2>&1 | tee "$dir/train.out"
}

train_fold() {
    local group
    for group in "${GROUP_LIST[@]}"; do
        with_lock "$(unit_dir "$1" "$group")" train train_unit "$1" "$2" "$group" || return 1
    done
}

run_folds train
if (( ${#failed[@]} > 0 )); then
    echo "[train.sh] FAILED folds: ${failed[*]} (the other folds' runs are in $EXPERIMENT_DIR)" >&2
    exit 1
fi
echo "[train.sh] all folds trained: $EXPERIMENT_DIR/fold*/"
