#!/usr/bin/env bash
# Example Slurm job array for a full study: one task per (setting, fold), each training its
# fold on one GPU and then evaluating it. Adapt the #SBATCH lines to your cluster.
#
#   mkdir -p runs/slurm
#   sbatch --export=ALL,DATASET=SABS script/slurm_array.sh             # 2 settings x 5 folds
#   sbatch --export=ALL,DATASET=CMR,SETTINGS=1 --array=0-4 script/slurm_array.sh
#   # when every task has finished, the fold table of each setting:
#   AGGREGATE_ONLY=1 DATASET=SABS SETTING=1 script/evaluate.sh
#   AGGREGATE_ONLY=1 DATASET=SABS SETTING=2 script/evaluate.sh
#
# Task t runs setting SETTINGS[t / 5] and fold t % 5; everything else (STEPS, DATA_ROOT,
# RUNS_ROOT, EXTRA, CHECKPOINT, SUPP_IDX ...) is passed on to script/train.sh and
# script/evaluate.sh through the environment.
#SBATCH --job-name=fafnet
#SBATCH --array=0-9
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=runs/slurm/%x_%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

task=${SLURM_ARRAY_TASK_ID:?submit this with sbatch: SLURM_ARRAY_TASK_ID is not set}
read -r -a settings <<< "${SETTINGS:-1 2}"
if (( task >= 5 * ${#settings[@]} )); then
    echo "array task $task is beyond ${#settings[@]} setting(s) x 5 folds" >&2
    exit 2
fi
setting=${settings[$((task / 5))]}
fold=$((task % 5))
# Slurm already restricts CUDA_VISIBLE_DEVICES to the task's GPU: no GPUS list here.
export SETTING=$setting FOLDS=$fold DEVICE=${DEVICE:-cuda} GPUS=
echo "task $task: ${DATASET:-SABS} setting $setting${PROTOCOL:+ ($PROTOCOL)} fold $fold on $(hostname)"
script/train.sh
AGGREGATE=0 script/evaluate.sh
