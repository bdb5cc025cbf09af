"""Pre-process Synapse multi-atlas abdominal CT (SABS) into the normalised layout
(docs/protocol.md section 12).

Raw layout (the challenge download): RAW/img/img00XX.nii.gz and RAW/label/label00XX.nii.gz,
paired by the number XX. Steps per volume:
  1. clip HU to [-125, 275] and map that window linearly onto [0, 255];
  2. crop 32 pixels from every in-plane border (512 -> 448);
  3. resample in-plane to 1.75 x the original spacing (448 / 256), slices unchanged, with the
     size rule int(n * old / new + 1): 257 x 257 in-plane and one extra (zero) slice;
     images linearly, labels one class at a time.
Volumes are re-indexed 0..N-1 in sorted raw order: OUT/image_<i>.nii.gz, OUT/label_<i>.nii.gz.
The experiments read <data_root>/sabs_CT_normalized, data_root defaulting to ./data_processed:

    python -m fafnet.preprocessing.sabs --raw-dir RAW --out-dir data_processed/sabs_CT_normalized
"""
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fafnet.io.nifti import Geometry
from fafnet.io.raw import read_raw_image, strip_nifti_suffix
from fafnet.preprocessing.common import (ProcessedVolume, extract_inplane_window, nifti_pair_case, pair_by_key,
                                         read_label_on_image_grid, require_dir, resample_image, resample_label,
                                         run_preprocessing)
from fafnet.preprocessing.command_line import build_parser, run_cli
from fafnet.preprocessing.manifest import Route

HU_WINDOW = (-125.0, 275.0)
BORDER = 32                      # pixels cropped from each in-plane border
SPACING_FACTOR = (512 - 2 * BORDER) / 256   # 448 / 256 = 1.75
LABEL_VALUES = range(0, 14)      # 0 background, 1..13 the SABS organs

_NUMBERED = re.compile(r"^(img|label)(\d+)$")


def find_sabs_pairs(raw_dir: str) -> List[Tuple[str, str]]:
    """(image, label) path pairs under RAW/img and RAW/label, in sorted image order."""
    image_dir = require_dir(os.path.join(require_dir(raw_dir, "raw SABS"), "img"), "SABS image")
    label_dir = require_dir(os.path.join(raw_dir, "label"), "SABS label")
    return pair_by_key(_numbered_files(image_dir, "img"), _numbered_files(label_dir, "label"),
                       image_dir, label_dir)


def _numbered_files(folder: str, prefix: str) -> dict:
    """number -> path for files named <prefix><digits>.nii[.gz]."""
    found = {}
    for name in os.listdir(folder):
        stem = strip_nifti_suffix(name)
        match = _NUMBERED.match(stem) if stem else None
        if match and match.group(1) == prefix:
            found[int(match.group(2))] = os.path.join(folder, name)
    return found


def window_ct(hu: np.ndarray, window: Sequence[float] = HU_WINDOW) -> np.ndarray:
    """Clip to the HU window and map it linearly onto [0, 255] (float32). Equal to the
    literature's min-max rescaling of the clipped volume whenever the volume reaches both
    window ends, as every abdominal CT does (air and bone)."""
    lo, hi = window
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


def sabs_route() -> Route:
    """The route and parameters recorded in the output folder's manifest."""
    return Route("ct_window_crop_resample", {
        "dataset": "SABS", "hu_window": list(HU_WINDOW), "border_px": BORDER,
        "inplane_spacing_factor": SPACING_FACTOR, "label_values": list(LABEL_VALUES)})


def check_croppable(shape: Sequence[int], image_path: str) -> None:
    """Raise naming the image unless its (z, y, x) `shape` leaves pixels after the border crop."""
    if min(shape[1:]) <= 2 * BORDER:
        raise ValueError(f"image {image_path} has in-plane size {tuple(shape[1:])}, too small to "
                         f"crop {BORDER} pixels from each border")


def validate_sabs_pair(pair: Tuple[str, str]) -> None:
    """Raise if the pair cannot be read completely, the image has non-finite voxels, shapes
    differ, or the label has undefined values."""
    image_path, label_path = pair
    image, geometry = read_raw_image(image_path)
    read_label_on_image_grid(label_path, LABEL_VALUES, image_path, image.shape, geometry)
    check_croppable(image.shape, image_path)


def preprocess_sabs_arrays(hu: np.ndarray, label: Optional[np.ndarray], geometry: Geometry,
                           notes: Tuple[str, ...] = ()) -> ProcessedVolume:
    """Steps 1-3 above on a CT volume in HU (z, y, x) and its label map on the same grid (or
    None: the result's label is None), both described by `geometry`."""
    image = window_ct(hu)
    crop_size = [n - 2 * BORDER for n in image.shape[1:]]
    image, cropped = extract_inplane_window(image, geometry, (BORDER, BORDER), crop_size, 0.0)
    sx, sy, sz = cropped.spacing
    new_spacing = (sx * SPACING_FACTOR, sy * SPACING_FACTOR, sz)
    image, out_geometry = resample_image(image, cropped, new_spacing)
    if label is not None:
        label, _ = extract_inplane_window(label, geometry, (BORDER, BORDER), crop_size, 0)
        label, _ = resample_label(label, cropped, new_spacing)
    return ProcessedVolume(image, label, out_geometry, notes)


def preprocess_sabs_volume(image_path: str, label_path: str) -> ProcessedVolume:
    """Read one CT volume and its label map and run steps 1-3 (`preprocess_sabs_arrays`)."""
    hu, geometry = read_raw_image(image_path)
    # The label on the image's grid (reoriented if stored with other axes, else refused).
    label, notes = read_label_on_image_grid(label_path, LABEL_VALUES, image_path, hu.shape, geometry)
    return preprocess_sabs_arrays(hu, label, geometry, notes)


def preprocess_sabs(raw_dir: str, out_dir: str, overwrite: bool = False) -> List[str]:
    """Pre-process every SABS volume under `raw_dir` into `out_dir`; returns the output paths."""
    pairs = find_sabs_pairs(raw_dir)
    return run_preprocessing(pairs, out_dir, validate_sabs_pair,
                             lambda pair: preprocess_sabs_volume(*pair), overwrite, "SABS",
                             raw_dir=raw_dir, route=sabs_route(), describe=nifti_pair_case)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m fafnet.preprocessing.sabs", __doc__,
                          "raw SABS folder holding img/img00XX.nii.gz and "
                          "label/label00XX.nii.gz")
    run_cli(parser, argv, preprocess_sabs, "SABS")


if __name__ == "__main__":
    main()
