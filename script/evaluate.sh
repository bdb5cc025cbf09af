#!/usr/bin/env bash
# Evaluate FAF-Net on every fold (docs/protocol.md, evaluation), then collect the folds into
# the literature's table (Dice per organ and mean, mean +- std over folds).
#
#   script/evaluate.sh                                   # SABS setting 1, after script/train.sh
#   SUPP_IDX="0 1 2 3 4" script/evaluate.sh              # several support volumes, averaged
#   CHECKPOINT='release/fold{fold}.pth' script/evaluate.sh    # the authors' checkpoints
#   CHECKPOINT=untrained DATASET=SYNTHETIC script/evaluate.sh # the untrained baseline
#
# Environment (default in brackets):
#   DATASET [config.py's]  SETTING [1]  PROTOCOL [release]  FOLDS [config.py's]  DEVICE [auto]  GPUS []
#   DATA_ROOT [./data_processed]  RUNS_ROOT [runs]  PYTHON [.venv/bin/python or python3]  EXTRA []
#                        as for script/train.sh (GPUS with two or more ids: folds in parallel)
#   CHECKPOINT [<the unit's folder>/train]
#                        what to evaluate; "{fold}" and "{group}" are replaced by the fold and
#                        group. A snapshot, a training run folder, a folder of training runs
#                        (its newest completed run of that fold), a release checkpoint, or "untrained"
#   SUPP_IDX [config: 2] which volume(s) of the fold are the support ("2", or "0 1 2": each
#                        is evaluated and reported, then averaged)
#   AGGREGATE [1]        0: skip the fold table (e.g. one Slurm task per fold)
#   AGGREGATE_ONLY [0]   1: evaluate nothing, only build the table from each fold's latest run
#
# Fold k is recorded in <experiment>/fold<k>/test/<id>/ (results.json, results.csv,
# predictions/, figures/), its console output in .../fold<k>/evaluate.out; with the groups
# protocol each group in fold<k>/group<g>/. The table goes to <experiment>/results_table.md
# and .csv (the groups joined into one row per fold). A failing fold does not stop the
# others; the script then exits with status 1 and names it.
set -euo pipefail
cd "$(dirname "$0")/.."

source script/lib.sh
fold_environment

# evaluate_unit FOLD DEVICE GROUP: one Sacred evaluation run; output to the console and the log.
evaluate_unit() {
    local fold=$1 device=$2 group=$3 dir checkpoint
    dir=$(unit_dir "$fold" "$group")
    checkpoint=${CHECKPOINT:-$dir/train}
    checkpoint=${checkpoint//\{fold\}/$fold}
    checkpoint=${checkpoint//\{group\}/$group}
    local args=("dataset=$DATASET" "${PROTOCOL_ARGS[@]}" "eval_fold=$fold" "device=$device"
                "data_root=$DATA_ROOT" "runs_dir=$dir" "checkpoint=$checkpoint")
    [[ -n "$group" ]] && args+=("group=$group")
    local supp
    supp=$(supp_idx_option)
    [[ -n "$supp" ]] && args+=("$supp")
    # shellcheck disable=SC2206  # EXTRA is a list of words on purpose
    args+=($EXTRA)
    echo "[evaluate.sh] fold $fold${group:+ group $group}: $PYTHON test.py with ${args[*]}"
    "$PYTHON" test.py with "${args[@]}" 2>&1 | tee "$dir/evaluate.out"
}

evaluate_fold() {
    local group
    for group in "${GROUP_LIST[@]}"; do
        with_lock "$(unit_dir "$1" "$group")" evaluate evaluate_unit "$1" "$2" "$group" || return 1
    done
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
    for group in "${GROUP_LIST[@]}"; do
        dir=$(unit_dir "$fold" "$group")
        run=$(latest_run "$dir/test") || { echo "[evaluate.sh] no evaluation run in $dir/test" >&2; exit 1; }
        runs+=("$run")
    done
done
"$PYTHON" utils.py aggregate "${runs[@]}" --out "$EXPERIMENT_DIR/results_table"
