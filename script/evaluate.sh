#!/usr/bin/env bash
# Evaluate FAF-Net on every fold (EP1 protocol, SPEC section 10), then collect the folds into
# the literature's table (Dice per organ and mean, mean +- std over folds).
#
#   script/evaluate.sh                                   # synthetic dataset, after script/train.sh
#   DATASET=SABS SUPP_IDX=2 script/evaluate.sh           # the release script's support volume
#   CHECKPOINT='release/fold{fold}.pth' DATASET=SABS script/evaluate.sh   # release checkpoints
#   CHECKPOINT=untrained script/evaluate.sh              # the untrained baseline
#
# Environment (default in brackets):
#   DATASET [SYNTHETIC]  SETTING [2]  FOLDS [0 1 2 3 4]  DEVICE [auto]  GPUS []
#   DATA_ROOT [./data_processed]  RUNS_ROOT [runs]  PYTHON [.venv/bin/python or python3]  EXTRA []
#                        as for script/train.sh (GPUS with two or more ids: folds in parallel)
#   CHECKPOINT [$RUNS_ROOT/<DATASET>_setting<SETTING>/fold{fold}/train]
#                        what to evaluate; "{fold}" is replaced by the fold number. A snapshot,
#                        a training run folder, a folder of training runs (its latest completed
#                        run), a release checkpoint, or "untrained"
#   SUPP_IDX [config: 0] which volume of the fold is the support
#   AGGREGATE [1]        0: skip the fold table (e.g. one Slurm task per fold)
#   AGGREGATE_ONLY [0]   1: evaluate nothing, only build the table from each fold's latest run
#
# Fold k is recorded in $RUNS_ROOT/<DATASET>_setting<SETTING>/fold<k>/test/<id>/ (results.json,
# results.csv, predictions/, figures/), its console output in .../fold<k>/evaluate.out; the
# table goes to $RUNS_ROOT/<DATASET>_setting<SETTING>/results_table.md and .csv. A failing
# fold does not stop the others; the script then exits with status 1 and names it.
set -euo pipefail
cd "$(dirname "$0")/.."

source script/lib.sh
fold_environment

DEFAULT_CHECKPOINT="$EXPERIMENT_DIR/fold{fold}/train"
CHECKPOINT=${CHECKPOINT:-$DEFAULT_CHECKPOINT}

# evaluate_fold FOLD DEVICE: one Sacred evaluation run; output to the console and the fold's log.
evaluate_fold() {
    local fold=$1 device=$2 fold_dir="$EXPERIMENT_DIR/fold$1"
    local args=("$DATASET" "setting=$SETTING" "eval_fold=$fold" "device=$device"
                "data_root=$DATA_ROOT" "runs_dir=$fold_dir" "checkpoint=${CHECKPOINT//\{fold\}/$fold}")
    [[ -n "${SUPP_IDX:-}" ]] && args+=("supp_idx=$SUPP_IDX")
    # shellcheck disable=SC2206  # EXTRA is a list of words on purpose
    args+=($EXTRA)
    mkdir -p "$fold_dir"
    echo "[evaluate.sh] fold $fold: $PYTHON test.py with ${args[*]}"
    "$PYTHON" test.py with "${args[@]}" 2>&1 | tee "$fold_dir/evaluate.out"
}



if [[ "${AGGREGATE_ONLY:-0}" == 1 ]]; then
    failed=()
else
    run_folds evaluate
fi

if (( ${#failed[@]} > 0 )); then
    echo "[evaluate.sh] FAILED folds: ${failed[*]} (the other folds' results are in $EXPERIMENT_DIR)" >&2
    exit 1
fi
[[ "${AGGREGATE:-1}" == 1 ]] || exit 0
runs=()
for fold in $FOLDS; do
    run=$(latest_run "$EXPERIMENT_DIR/fold$fold/test") || { echo "[evaluate.sh] fold $fold has no evaluation run in $EXPERIMENT_DIR/fold$fold/test" >&2; exit 1; }
    runs+=("$run")
done
"$PYTHON" utils.py aggregate "${runs[@]}" --out "$EXPERIMENT_DIR/results_table"
