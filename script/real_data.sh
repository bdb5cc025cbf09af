#!/usr/bin/env bash
# A model trained and evaluated on a real pre-processed dataset on a 2-core CPU, in about an
# hour (`make real-data DATASET=CMR DATA_ROOT=...`): self-supervised training (setting 1, one
# fold, the supervoxels shipped beside the data) with the options of config.py's `cpu_recipe`
# (128 x 128, random start, Adam 2e-4, 1000 steps; each an environment variable below), then the release's evaluation protocol (support volume
# 2, EP1) of the weights training started from, of every snapshot (the learning curve) and of
# the final model, per class. docs/real_data.md shows it on CMR (and the command for CHAOS-T2).
#
# DATA_ROOT is the folder that holds the dataset's folder (cmr_MR_normalized/,
# chaos_MR_T2_normalized/, ...) and its supervoxels_<N>/ exactly as the FSMIS repositories
# distribute them; nothing is renamed or copied.
#
# No pretrained backbone can be downloaded on the machine this was measured on, hence the
# random start, named in every table's header; a run with the paper's pretrained DeepLabV3
# backbone passes PRETRAINED=... and RANDOM_START=release.
#
# Environment (default in brackets):
#   DATA_ROOT (required)    the folder holding the dataset's folder
#   DATASET [CMR]           CMR, CHAOST2, SABS or Prostate_MRI
#   OUT [real_data_output/<DATASET>]   runs/train/<id>, runs/test/<id>
#   FOLD [0]                evaluation fold; training uses the other volumes
#   SIZE [128]              resample_in_plane: every volume (images linear, labels and supervoxels
#                           nearest) resampled in-plane to SIZE x SIZE, for training and evaluation
#                           alike; Dice is computed on that grid. SIZE=none: as stored (256 x 256),
#                           as the release (about 9 s a CPU step there)
#   MIN_SIZE [50]           episode min foreground pixels (the release's 200 at 256 x 256 is the
#                           area of 50 at 128 x 128)
#   STEPS [1000] SNAPSHOT [250]   training steps; snapshot (and curve point) interval
#   OPTIMIZER [adam] LR [2e-4] RANDOM_START [demo] PRETRAINED []   as in script/demo.sh
#   MODEL [fafnet]          fafnet, adnet or ssl_alpnet (RANDOM_START=demo gives each its
#                           random-start model options, lib.sh)
#   EXTRA []                more options for train.py and test.py (shared options only, e.g.
#                           "amp_bf16=True"); TRAIN_EXTRA [] for train.py alone (e.g. "cuda_graph=True
#                           channels_last=True")
#   DEVICE [auto]  WORKERS [1]  THREADS []  PYTHON [.venv/bin/python or python3]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${DATA_ROOT:-}" ]]; then
    echo "real_data.sh: set DATA_ROOT to the folder holding the dataset's folder and its supervoxels" >&2
    exit 2
fi
DATASET=${DATASET:-CMR}
OUT=${OUT:-real_data_output/$DATASET}
MODEL=${MODEL:-fafnet}
THREADS=${THREADS:-}
FOLD=${FOLD:-0}
SIZE=${SIZE:-128}
MIN_SIZE=${MIN_SIZE:-50}
STEPS=${STEPS:-1000}
SNAPSHOT=${SNAPSHOT:-250}
OPTIMIZER=${OPTIMIZER:-adam}
LR=${LR:-2e-4}
RANDOM_START=${RANDOM_START:-demo}
PRETRAINED=${PRETRAINED:-}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-1}
EXTRA=${EXTRA:-}
TRAIN_EXTRA=${TRAIN_EXTRA:-}
source script/lib.sh   # PYTHON, latest_run
RUNS="$OUT/runs"

common=("dataset=$DATASET" "model=$MODEL" "data_root=$DATA_ROOT" "eval_fold=$FOLD" "device=$DEVICE" "runs_dir=$RUNS")
[[ -n "$THREADS" ]] && common+=("num_threads=$THREADS")
[[ "$SIZE" != none ]] && common+=("resample_in_plane=[$SIZE,$SIZE]")
# shellcheck disable=SC2206  # EXTRA holds whitespace-separated Sacred options
common+=($EXTRA)
train_options=("n_steps=$STEPS" "snapshot_interval=$SNAPSHOT" print_interval=25 "num_workers=$WORKERS"
               "optimizer=$OPTIMIZER" "lr=$LR" "min_size=$MIN_SIZE" save_initial_snapshot=True)
add_random_start_options   # lib.sh: the demo's random-start options unless RANDOM_START=release
# shellcheck disable=SC2206
train_options+=($TRAIN_EXTRA)
if [[ -n "$PRETRAINED" ]]; then common+=("pretrained_weights=$PRETRAINED"); else common+=(pretrained_weights=none); fi

started=$(date +%s)
echo "== $MODEL on $DATASET ($DATA_ROOT), fold $FOLD, in-plane size ${SIZE}, $STEPS steps; outputs in $OUT/"
echo "== 1/2 training"
"$PYTHON" train.py with "${common[@]}" "${train_options[@]}"
trained=$(latest_run "$RUNS/train")

echo "== 2/2 evaluating every snapshot of $trained (step 0 = the untrained model)"
evaluations=()
for snapshot in "$trained"/snapshots/step_*.pth "$trained/snapshots/final.pth"; do
    "$PYTHON" test.py with "${common[@]}" "checkpoint=$snapshot"
    evaluations+=("$(latest_run "$RUNS/test")")
done
untrained_eval=${evaluations[0]}
trained_eval=${evaluations[${#evaluations[@]}-1]}

elapsed=$(( $(date +%s) - started ))
echo
echo "== Dice per class on fold $FOLD's query volumes"
echo "-- trained for $STEPS steps:"
"$PYTHON" utils.py show "$trained_eval"
echo "-- trained against untrained:"
"$PYTHON" utils.py compare "$trained_eval" "$untrained_eval"
echo "-- learning curve:"
"$PYTHON" utils.py curve "${evaluations[@]}"
echo "== done in $((elapsed / 60)) min $((elapsed % 60)) s"
echo "   training run:     $trained"
echo "   evaluation runs:  ${evaluations[*]}"
