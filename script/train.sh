#!/usr/bin/env bash
# Train FAF-Net on every fold, like the release's training script.
#
#   script/train.sh                                    # synthetic dataset, 5 folds, config defaults
#   DATASET=SABS SETTING=1 script/train.sh             # a real dataset (pre-processed first)
#   GPUS=0,1,2,3 DATASET=CHAOST2 script/train.sh       # one fold per GPU, in parallel
#
# Environment (default in brackets):
#   DATASET [SYNTHETIC]  SABS, CHAOST2, CMR, Prostate_MRI or SYNTHETIC (a named config)
#   SETTING [2]          1 or 2 (SPEC section 9)
#   FOLDS [0 1 2 3 4]    folds to train, space-separated
#   STEPS, SNAPSHOT      n_steps and snapshot_interval [config defaults: 42000, 6000]
#   DEVICE [auto]        auto, cpu, cuda, mps (with GPUS: cuda)
#   GPUS []              comma-separated GPU ids; with two or more, folds run in parallel,
#                        fold i on GPU number (i mod #GPUS); otherwise folds run one by one
#   DATA_ROOT [./data_processed]  RUNS_ROOT [runs]  PYTHON [.venv/bin/python or python3]
#   EXTRA []             more Sacred options, e.g. "use_gt=True num_workers=8 amp_bf16=True"
#
# Fold k is recorded in $RUNS_ROOT/<DATASET>_setting<SETTING>/fold<k>/train/<id>/ with its
# console output in .../fold<k>/train.out. A failing fold does not stop the others; the
# script then exits with status 1 and names the failed folds.
set -euo pipefail
cd "$(dirname "$0")/.."

source script/lib.sh
fold_environment

# train_fold FOLD DEVICE: one Sacred training run; output to the console and the fold's log.
train_fold() {
    local fold=$1 device=$2 fold_dir="$EXPERIMENT_DIR/fold$1"
    local args=("$DATASET" "setting=$SETTING" "eval_fold=$fold" "device=$device"
                "data_root=$DATA_ROOT" "runs_dir=$fold_dir")
    [[ -n "${STEPS:-}" ]] && args+=("n_steps=$STEPS")
    [[ -n "${SNAPSHOT:-}" ]] && args+=("snapshot_interval=$SNAPSHOT")
    # shellcheck disable=SC2206  # EXTRA is a list of words on purpose
    args+=($EXTRA)
    mkdir -p "$fold_dir"
    echo "[train.sh] fold $fold: $PYTHON train.py with ${args[*]}"
    "$PYTHON" train.py with "${args[@]}" 2>&1 | tee "$fold_dir/train.out"
}


run_folds train
if (( ${#failed[@]} > 0 )); then
    echo "[train.sh] FAILED folds: ${failed[*]} (the other folds' runs are in $EXPERIMENT_DIR)" >&2
    exit 1
fi
echo "[train.sh] all folds trained: $EXPERIMENT_DIR/fold*/train/"
