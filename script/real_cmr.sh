#!/usr/bin/env bash
# script/real_data.sh on the community's CMR (kept for the commands of 0.5 and earlier):
#   DATA_ROOT=../shared/real/CMR bash script/real_cmr.sh
set -euo pipefail
DATASET=CMR OUT=${OUT:-real_cmr_output} exec bash "$(dirname "$0")/real_data.sh"
