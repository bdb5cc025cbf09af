#!/usr/bin/env bash
# FAF-Net on real cardiac MRI, within an hour on a 2-core CPU (`make real-cmr DATA_ROOT=...`):
# self-supervised training on the community's pre-processed CMR (setting 1, one fold, the
# shipped supervoxels_1000), then the release's evaluation protocol (support volume 2, EP1) of
# the weights training started from, of every snapshot (the learning curve) and of the final
# model, per class.
#
# DATA_ROOT is the folder that holds cmr_MR_normalized/ and supervoxels_1000/ exactly as the
# FSMIS repositories distribute them (image_1 .. image_35, labels 200/500/600); nothing is
# renamed or copied.
#
# The options are the demo's random start (no pretrained backbone can be downloaded on the
# machine this was measured on), named in every table's header; a run with the paper's
# pretrained DeepLabV3 backbone passes PRETRAINED=... and RANDOM_START=release.
#
# Environment (default in brackets):
#   DATA_ROOT (required)    the community's CMR folder
#   OUT [real_cmr_output]   runs/train/<id>, runs/test/<id>
#   FOLD [0]                evaluation fold; training uses the other volumes (27 of 35)
#   SIZE [128]              resample_in_plane: every volume (images linear, labels and supervoxels
#                           nearest) resampled from 256 x 256 to SIZE x SIZE, for training and
#                           evaluation alike; Dice is computed on that grid. At 256 x 256 a CPU
#                           training step takes ~9 s (42000 steps: 4 days); at 128 ~2 s.
#                           SIZE=none: the volumes as stored (256 x 256), as the release
#   MIN_SIZE [50]           episode min foreground pixels: the release's 200 at 256 x 256 covers the
#                           same area as 50 at 128 x 128
#   STEPS [1000] SNAPSHOT [250]   training steps; snapshot (and curve point) interval
#   OPTIMIZER [adam] LR [2e-4] RANDOM_START [demo] PRETRAINED []   as in script/demo.sh
#   EXTRA []                more options for train.py and test.py (shared options only, e.g.
#                           "amp_bf16=True"); TRAIN_EXTRA [] for train.py alone (e.g. "cuda_graph=True
#                           channels_last=True")
#   DEVICE [auto]  WORKERS [1]  PYTHON [.venv/bin/python or python3]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${DATA_ROOT:-}" ]]; then
    echo "real_cmr.sh: set DATA_ROOT to the folder holding cmr_MR_normalized/ and supervoxels_1000/" >&2
    exit 2
fi
OUT=${OUT:-real_cmr_output}
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

common=(CMR "data_root=$DATA_ROOT" "eval_fold=$FOLD" "device=$DEVICE" "runs_dir=$RUNS")
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
echo "== FAF-Net on real CMR ($DATA_ROOT), fold $FOLD, in-plane size ${SIZE}, $STEPS steps; outputs in $OUT/"
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
