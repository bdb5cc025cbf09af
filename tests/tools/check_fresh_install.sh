#!/usr/bin/env bash
# The console scripts from a fresh, non-editable install: builds a wheel of this checkout
# (with the compiled supervoxel module), installs it into a new virtual environment whose
# dependencies come from an existing one (no download), and runs every console script from
# an empty folder, so nothing of the checkout is importable. Then a two-step synthetic
# pipeline: phantom, supervoxels, training, evaluation, fold table.
#
#     bash tests/tools/check_fresh_install.sh [DEPENDENCIES_VENV]    # default: .venv
set -euo pipefail
cd "$(dirname "$0")/../.."
source_venv=$(cd "${1:-.venv}" && pwd)
work=$(mktemp -d)
trap 'status=$?; [[ $status -ne 0 && -f "$work/cwd/log.txt" ]] && tail -20 "$work/cwd/log.txt"; rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The dependencies (torch, sacred, ...) of the existing environment, behind the new one's own.
"$source_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/deps.pth"
"$source_venv/bin/python" -m pip wheel --no-deps --no-build-isolation -w "$work/wheel" . > "$work/wheel.log" 2>&1 \
    || { cat "$work/wheel.log"; exit 1; }
"$work/venv/bin/python" -m pip install --no-deps "$work"/wheel/*.whl > "$work/install.log" 2>&1 \
    || { cat "$work/install.log"; exit 1; }
bin="$work/venv/bin"
mkdir "$work/cwd" && cd "$work/cwd"
where=$("$bin/python" -c 'import fafnet, os; print(os.path.dirname(fafnet.__file__))')
case "$where" in "$work"/venv/*) echo "fafnet imported from the install: $where";;
                 *) echo "fafnet imported from $where, not from the install"; exit 1;; esac
"$bin/python" -c 'import fafnet.supervoxels._felzenszwalb_3d' && echo "compiled supervoxel module: installed"
for command in fafnet-segment fafnet-preprocess fafnet-results; do
    "$bin/$command" --help > /dev/null && echo "$command --help: ok"
done
"$bin/fafnet-train" print_config > /dev/null && echo "fafnet-train print_config: ok"
"$bin/fafnet-evaluate" print_config > /dev/null && echo "fafnet-evaluate print_config: ok"
data=data_processed/synthetic_CT_normalized
"$bin/fafnet-preprocess" synthetic --out "$data" --subjects 10 --size 33 --slices 8 > log.txt 2>&1
"$bin/fafnet-preprocess" supervoxels --data-dir "$data" --min-size 20 >> log.txt 2>&1
echo "fafnet-preprocess synthetic, supervoxels: $(ls "$data" | grep -c '^image_') volumes, $(ls "$data"/supervoxels_20 | wc -l) supervoxel files"
"$bin/fafnet-train" with SYNTHETIC n_steps=2 snapshot_interval=2 print_interval=1 min_size=20 supervoxel_min_size=20 'image_size=[33,33]' \
    pretrained_weights=none device=cpu num_workers=0 >> log.txt 2>&1
echo "fafnet-train: $(ls runs/train/1/snapshots)"
"$bin/fafnet-evaluate" with SYNTHETIC checkpoint=runs/train/1 'image_size=[33,33]' device=cpu save_figures=False >> log.txt 2>&1
"$bin/python" -c 'import json; r = json.load(open("runs/test/1/results.json")); print("fafnet-evaluate: mean Dice", r["mean_dice"], "model", r["protocol"]["model"])'
"$bin/fafnet-results" runs runs/train runs/test >> log.txt 2>&1 && echo "fafnet-results runs: ok"
echo "fresh install: every console script works"
