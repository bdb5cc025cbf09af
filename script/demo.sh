#!/usr/bin/env bash
# The synthetic demo (`make demo`): generate the embedded synthetic dataset and its
# supervoxels, train FAF-Net self-supervised (supervoxel episodes) on fold 0 with a short
# schedule from a random start, then evaluate the trained model and the weights it started
# from with the real EP1 protocol, and print both tables and their difference per organ.
#
# Environment (default in brackets):
#   DEMO_DIR [demo_output]  everything goes here: data/, runs/train/<id>, runs/test/<id>
#   SUBJECTS [10] SIZE [97] SLICES [28]    the synthetic dataset (folds of 3 volumes). At 65 x 65
#                           the spleen and kidneys are 2-3 feature pixels across and are not learnt
#   SUPERVOXEL_MIN [200]    supervoxel min size in voxels (60-80 supervoxels per 97 x 97 x 28 volume;
#                           the same fraction of the volume as min size 5000 on real CT)
#   MIN_SIZE [200]          episode min foreground pixels (the release's; at 97 x 97 it selects the larger
#                           supervoxels: 100 gave 52 % mean Dice after 400 steps, 200 gave 68 %)
#   STEPS [400]             training steps (the release trains 42000 per fold)
#   SNAPSHOT [$STEPS]       snapshot interval (snapshots in between only give a learning curve:
#                           evaluate them with test.py checkpoint=<run>/snapshots/step_XXXXXXX.pth)
#   OPTIMIZER [adam] LR [2e-4]  not the release's SGD lr 1e-3: from a random start the stem's
#                           gradients are ~1e3x the heads' and ICM's, so SGD diverges; Adam scales
#                           each tensor's step by its own gradients. OPTIMIZER=sgd LR=1e-3: the release
#   RANDOM_START [demo]     demo: zero_init_residual=True threshold_head_init_scale=0.05 (see
#                           fafnet/models/factory.py: with the release's initialisation and no
#                           pretrained backbone the prediction starts saturated and training
#                           collapses to empty predictions);
#                           release: the release's initialisation
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
SIZE=${SIZE:-97}
SLICES=${SLICES:-28}
SUPERVOXEL_MIN=${SUPERVOXEL_MIN:-200}
MIN_SIZE=${MIN_SIZE:-200}
STEPS=${STEPS:-400}
SNAPSHOT=${SNAPSHOT:-$STEPS}
GRAD_CLIP=${GRAD_CLIP-}
OPTIMIZER=${OPTIMIZER:-adam}
LR=${LR:-2e-4}
RANDOM_START=${RANDOM_START:-demo}
SETTING=${SETTING:-1}
PRETRAINED=${PRETRAINED:-}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-1}
source script/lib.sh   # PYTHON, latest_run
DATA_ROOT="$DEMO_DIR/data"
RUNS="$DEMO_DIR/runs"

started=$(date +%s)
echo "== FAF-Net demo on the synthetic dataset: about 12 minutes on a 2-core CPU (much less on a GPU)."
echo "== outputs: $DEMO_DIR/"

echo "== 1/4 synthetic data ($SUBJECTS subjects, $SLICES x $SIZE x $SIZE) and supervoxels (min size $SUPERVOXEL_MIN)"
"$PYTHON" -m fafnet.synthetic --out "$DATA_ROOT/synthetic_CT_normalized" --subjects "$SUBJECTS" \
    --size "$SIZE" --slices "$SLICES" --supervoxels --min-size "$SUPERVOXEL_MIN"

common=(SYNTHETIC "data_root=$DATA_ROOT" "image_size=[$SIZE,$SIZE]" eval_fold=0 "device=$DEVICE" "runs_dir=$RUNS"
        "setting=$SETTING")
train_options=("n_steps=$STEPS" "snapshot_interval=$SNAPSHOT" print_interval=20 "num_workers=$WORKERS"
               "optimizer=$OPTIMIZER" "lr=$LR" "min_size=$MIN_SIZE" "supervoxel_min_size=$SUPERVOXEL_MIN"
               save_initial_snapshot=True)
add_random_start_options   # lib.sh: the demo's random-start options unless RANDOM_START=release
[[ -n "$GRAD_CLIP" ]] && train_options+=("grad_clip_norm=$GRAD_CLIP")
[[ -n "$PRETRAINED" ]] && common+=("pretrained_weights=$PRETRAINED")

echo "== 2/4 training, fold 0, $STEPS steps"
"$PYTHON" train.py with "${common[@]}" "${train_options[@]}"
trained=$(latest_run "$RUNS/train")

echo "== 3/4 evaluating the trained model ($trained)"
"$PYTHON" test.py with "${common[@]}" "checkpoint=$trained"
trained_eval=$(latest_run "$RUNS/test")

# The untrained baseline is the snapshot written before the first step: exactly the weights
# that training started from (same seed, same initialisation options).
initial="$trained/snapshots/step_0000000.pth"
echo "== 4/4 evaluating the untrained model (the weights training started from: $initial)"
"$PYTHON" test.py with "${common[@]}" "checkpoint=$initial"
untrained_eval=$(latest_run "$RUNS/test")

elapsed=$(( $(date +%s) - started ))
echo
echo "== Results (Dice and IoU per class on fold 0's query volumes)"
echo "-- trained for $STEPS steps:"
"$PYTHON" utils.py show "$trained_eval"
echo "-- untrained:"
"$PYTHON" utils.py show "$untrained_eval"
echo "-- Dice, trained against untrained:"
"$PYTHON" utils.py compare "$trained_eval" "$untrained_eval"
echo "== done in $((elapsed / 60)) min $((elapsed % 60)) s"
echo "   training run:     $trained (snapshots/, train.log, metrics.json)"
echo "   evaluation runs:  $trained_eval and $untrained_eval"
echo "                     (results.json, results.csv, predictions/*.nii.gz, figures/*.png)"
