#!/usr/bin/env bash
# The synthetic demo (`make demo`): generate the embedded synthetic dataset and its
# supervoxels, train FAF-Net self-supervised on fold 0 with a short schedule, then evaluate
# the trained model and the untrained one with the real EP1 protocol, and print both tables.
#
# Environment (default in brackets):
#   DEMO_DIR [demo_output]  everything goes here: data/, runs/train/<id>, runs/test/<id>
#   SUBJECTS [10] SIZE [65] SLICES [28]    the synthetic dataset (folds of 3 volumes)
#   STEPS [300]             training steps (the release trains 42000 per fold)
#   OPTIMIZER [adam] LR [1e-4]  not the release's SGD lr 1e-3: from a random start the stem's
#                           gradients (~1e4) are ~1e3x the heads' and ICM's, so SGD diverges, and
#                           total-norm clipping leaves only the stem learning; Adam scales each
#                           tensor's step by its own gradients. OPTIMIZER=sgd LR=1e-3: the release
#   GRAD_CLIP []            gradient-norm clipping (not in the release; empty: off)
#   SETTING [1]             1: all slices train; 2: slices with a test organ are dropped, which on
#                           the phantom leaves only 4-7 of 28 slices per volume
#   PRETRAINED []           a torchvision ResNet-101 / DeepLabV3 file, if you have one
#   DEVICE [auto]  WORKERS [1]  PYTHON [.venv/bin/python or python3]
# Re-running reuses the generated data and trains a new run.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-demo_output}
SUBJECTS=${SUBJECTS:-10}
SIZE=${SIZE:-65}
SLICES=${SLICES:-28}
STEPS=${STEPS:-300}
GRAD_CLIP=${GRAD_CLIP-}
OPTIMIZER=${OPTIMIZER:-adam}
LR=${LR:-1e-4}
SETTING=${SETTING:-1}
PRETRAINED=${PRETRAINED:-}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-1}
source script/lib.sh   # PYTHON, latest_run
DATA_ROOT="$DEMO_DIR/data"
RUNS="$DEMO_DIR/runs"

started=$(date +%s)
echo "== FAF-Net demo on the synthetic dataset: about 6 minutes on a 2-core CPU (much less on a GPU)."
echo "== outputs: $DEMO_DIR/"

echo "== 1/4 synthetic data ($SUBJECTS subjects, $SLICES x $SIZE x $SIZE) and supervoxels"
"$PYTHON" -m data.synthetic --out "$DATA_ROOT/synthetic_CT_normalized" --subjects "$SUBJECTS" \
    --size "$SIZE" --slices "$SLICES" --supervoxels

common=(SYNTHETIC "data_root=$DATA_ROOT" "image_size=[$SIZE,$SIZE]" eval_fold=0 "device=$DEVICE" "runs_dir=$RUNS"
        "setting=$SETTING")
train_options=("n_steps=$STEPS" "snapshot_interval=$STEPS" print_interval=20 "num_workers=$WORKERS"
               "optimizer=$OPTIMIZER" "lr=$LR")
[[ -n "$GRAD_CLIP" ]] && train_options+=("grad_clip_norm=$GRAD_CLIP")
[[ -n "$PRETRAINED" ]] && common+=("pretrained_weights=$PRETRAINED")

echo "== 2/4 training, fold 0, $STEPS steps"
"$PYTHON" train.py with "${common[@]}" "${train_options[@]}"
trained=$(latest_run "$RUNS/train")

echo "== 3/4 evaluating the trained model ($trained)"
"$PYTHON" test.py with "${common[@]}" "checkpoint=$trained"
trained_eval=$(latest_run "$RUNS/test")

echo "== 4/4 evaluating the untrained model (same protocol, same seed)"
"$PYTHON" test.py with "${common[@]}" checkpoint=untrained
untrained_eval=$(latest_run "$RUNS/test")

elapsed=$(( $(date +%s) - started ))
echo
echo "== Results (Dice and IoU per class on fold 0's query volumes)"
echo "-- trained for $STEPS steps:"
"$PYTHON" utils.py show "$trained_eval"
echo "-- untrained:"
"$PYTHON" utils.py show "$untrained_eval"
echo "== done in $((elapsed / 60)) min $((elapsed % 60)) s"
echo "   training run:     $trained (snapshots/, train.log, metrics.json)"
echo "   evaluation runs:  $trained_eval and $untrained_eval"
echo "                     (results.json, results.csv, predictions/*.nii.gz, figures/*.png)"
