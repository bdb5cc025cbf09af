# Shared by script/train.sh, script/evaluate.sh, script/demo.sh and script/real_cmr.sh (sourced, not run):
# the fold scripts' environment, the Python to use, run locks, the fold loop and the random-start options.

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# config_value NAME: the value of option NAME in config.py (or in the file FAFNET_CONFIG names);
# a list prints as space-separated words.
config_value() {
    "$PYTHON" -c '
import sys
from fafnet.cli.experiment import default_options
value = default_options()[sys.argv[1]]
print(" ".join(map(str, value)) if isinstance(value, list) else value)' "$1"
}

# fold_environment: the defaults of the variables documented in train.sh and evaluate.sh:
# the dataset and folds of config.py (DATASET and FOLDS override them), setting 1.
fold_environment() {
    DATASET=${DATASET:-$(config_value dataset)}
    SETTING=${SETTING:-1}
    PROTOCOL=${PROTOCOL:-release}
    FOLDS=${FOLDS:-$(config_value folds)}
    DEVICE=${DEVICE:-auto}
    GPUS=${GPUS:-}
    DATA_ROOT=${DATA_ROOT:-./data_processed}
    RUNS_ROOT=${RUNS_ROOT:-runs}
    EXTRA=${EXTRA:-}
    PROTOCOL_ARGS=("setting=$SETTING")
    GROUP_LIST=("")
    if [[ "$SETTING" == 2 ]]; then
        EXPERIMENT_DIR="$RUNS_ROOT/${DATASET}_setting2_${PROTOCOL}"
        PROTOCOL_ARGS+=("setting2_protocol=$PROTOCOL")
        # The groups protocol (Ouyang et al.) trains and tests each class group separately.
        [[ "$PROTOCOL" == groups ]] && GROUP_LIST=(0 1)
    else
        EXPERIMENT_DIR="$RUNS_ROOT/${DATASET}_setting1"
    fi
}

# unit_dir FOLD GROUP: the folder of one training/evaluation unit (a fold, or a fold's group).
unit_dir() {
    if [[ -n "$2" ]]; then echo "$EXPERIMENT_DIR/fold$1/group$2"; else echo "$EXPERIMENT_DIR/fold$1"; fi
}

# latest_run FOLDER: the highest-numbered Sacred run folder in FOLDER.
latest_run() {
    local id
    id=$(find "$1" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' 2>/dev/null | sort -n | tail -1)
    [[ -n "$id" ]] && echo "$1/$id"
}

# with_lock DIR NAME COMMAND...: run COMMAND while holding DIR/.NAME.lock, so that two scripts
# working on the same fold never run (and write their logs) at the same time. A lock whose
# process is gone (a killed script) is taken over.
with_lock() {
    local dir=$1 name=$2 lock status
    shift 2
    lock="$dir/.$name.lock"
    mkdir -p "$dir"
    if ! mkdir "$lock" 2>/dev/null; then
        local owner
        owner=$(cat "$lock/pid" 2>/dev/null || true)
        if [[ -n "$owner" ]] && kill -0 "$owner" 2>/dev/null; then
            echo "[$name.sh] $dir is in use by process $owner (lock $lock); not starting a second $name there" >&2
            return 75
        fi
        echo "[$name.sh] taking over the stale lock $lock (process ${owner:-unknown} is gone)" >&2
        rm -rf "$lock" && mkdir "$lock" || return 75
    fi
    echo $$ > "$lock/pid"
    status=0
    "$@" || status=$?
    rm -rf "$lock"
    return $status
}

# supp_idx_option: SUPP_IDX ("2", "0 1 2" or "0,1,2") as a Sacred option, or nothing.
supp_idx_option() {
    [[ -z "${SUPP_IDX:-}" ]] && return 0
    local list=${SUPP_IDX//,/ }
    read -r -a values <<< "$list"
    if (( ${#values[@]} == 1 )); then echo "supp_idx=${values[0]}"; else
        local IFS=,; echo "supp_idx=[${values[*]}]"; fi
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
        echo "[$run.sh] fold $fold FAILED (see $EXPERIMENT_DIR/fold$fold/ and its $run.out)" >&2
    done
}

# add_random_start_options: append the random-start model options of MODEL (default fafnet; docs
# in script/demo.sh) to the caller's train_options when RANDOM_START=demo and no PRETRAINED file
# is given: every model's zero_init_residual, and FAF-Net's threshold_head_init_scale.
add_random_start_options() {
    case "$RANDOM_START" in
        demo) [[ -n "$PRETRAINED" ]] && return 0
              train_options+=(model_options.zero_init_residual=True)
              [[ "${MODEL:-fafnet}" == fafnet ]] && train_options+=(model_options.threshold_head_init_scale=0.05) ;;
        release) ;;
        *) echo "RANDOM_START must be demo or release, got '$RANDOM_START'" >&2; exit 2 ;;
    esac
    return 0
}
