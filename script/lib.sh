# Shared by script/train.sh, script/evaluate.sh and script/demo.sh (sourced, not run):
# the fold scripts' environment, the Python to use, and the fold loop.

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# fold_environment: the defaults of the variables documented in train.sh and evaluate.sh.
fold_environment() {
    DATASET=${DATASET:-SYNTHETIC}
    SETTING=${SETTING:-2}
    FOLDS=${FOLDS:-0 1 2 3 4}
    DEVICE=${DEVICE:-auto}
    GPUS=${GPUS:-}
    DATA_ROOT=${DATA_ROOT:-./data_processed}
    RUNS_ROOT=${RUNS_ROOT:-runs}
    EXTRA=${EXTRA:-}
    EXPERIMENT_DIR="$RUNS_ROOT/${DATASET}_setting${SETTING}"
}

# latest_run FOLDER: the highest-numbered Sacred run folder in FOLDER.
latest_run() {
    local id
    id=$(find "$1" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' 2>/dev/null | sort -n | tail -1)
    [[ -n "$id" ]] && echo "$1/$id"
}

# run_folds NAME: run NAME_fold for every fold, in parallel over GPUS when it lists two or
# more (one worker per GPU, each taking its share of the folds in turn), else one by one.
# Sets `failed` to the folds that failed; the others' results are kept either way.
run_folds() {
    local run=$1 failures
    failures=$(mktemp)
    IFS=',' read -r -a gpu_list <<< "$GPUS"
    read -r -a fold_list <<< "$FOLDS"
    if (( ${#gpu_list[@]} > 1 )); then
        local pids=() g
        for g in "${!gpu_list[@]}"; do
            (
                for i in "${!fold_list[@]}"; do
                    (( i % ${#gpu_list[@]} == g )) || continue
                    fold=${fold_list[$i]}
                    echo "[$run.sh] fold $fold started on GPU ${gpu_list[$g]}"
                    if CUDA_VISIBLE_DEVICES=${gpu_list[$g]} "${run}_fold" "$fold" cuda > /dev/null; then
                        echo "[$run.sh] fold $fold finished"
                    else
                        echo "$fold" >> "$failures"
                    fi
                done
            ) &
            pids+=($!)
        done
        wait "${pids[@]}" || true
    else
        if (( ${#gpu_list[@]} == 1 )); then
            export CUDA_VISIBLE_DEVICES=${gpu_list[0]}
            DEVICE=cuda
        fi
        for fold in "${fold_list[@]}"; do
            "${run}_fold" "$fold" "$DEVICE" || echo "$fold" >> "$failures"
        done
    fi
    mapfile -t failed < <(sort -n "$failures")
    rm -f "$failures"
    for fold in "${failed[@]}"; do
        echo "[$run.sh] fold $fold FAILED (see $EXPERIMENT_DIR/fold$fold/$run.out)" >&2
    done
}
