"""Pre-process MS-CMRSeg bSSFP cardiac MRI (CMR) into the normalised layout
(docs/protocol.md section 12).

Raw layout (the challenge download, any folder depth under RAW): images
patient<N>_C0.nii[.gz] and labels patient<N>_C0_manual.nii[.gz], paired by patient<N>.
Labels keep the challenge values 200 (LV myocardium), 500 (LV blood pool), 600 (RV); they are
mapped to 1, 2, 3 when loaded for training. Steps per volume: clip the top 0.5 % of
intensities, resample to spacing (1.25, 1.25, 7.99) mm (x, y, z) with the size rule
int(n * old / new + 1), crop or pad in-plane to 256 x 256 around the centre. By default
(--arithmetic release) this runs in the images' integer pixel type, truncating the clip value
and the resampled values as the literature's data was made; --arithmetic float computes in
float32.
Volumes are re-indexed 0..N-1 in natural order of the patient names (patient2 before
patient10): OUT/image_<i>.nii.gz, OUT/label_<i>.nii.gz.
Every image needs its label: move unlabelled volumes out of RAW first.
The experiments read <data_root>/cmr_MR_normalized, data_root defaulting to ./data_processed:

    python -m fafnet.preprocessing.cmr --raw-dir RAW --out-dir data_processed/cmr_MR_normalized
"""
import functools
from typing import List, Optional, Sequence, Tuple

from fafnet.preprocessing.common import (DEFAULT_MR_ARITHMETIC, ProcessedVolume, find_suffix_pairs, mr_route,
                                         nifti_pair_case, preprocess_nifti_mr_pair, run_preprocessing,
                                         validate_nifti_pair)
from fafnet.preprocessing.command_line import add_arithmetic_argument, build_parser, parse_arithmetic, run_cli
from fafnet.preprocessing.manifest import Route

TARGET_SPACING = (1.25, 1.25, 7.99)   # (x, y, z) mm
LABEL_VALUES = (0, 200, 500, 600)
IMAGE_SUFFIX, LABEL_SUFFIX = "_C0", "_C0_manual"


def find_cmr_pairs(raw_dir: str) -> List[Tuple[str, str]]:
    """(image, label) path pairs under `raw_dir`, in natural order of the patient names."""
    return find_suffix_pairs(raw_dir, IMAGE_SUFFIX, LABEL_SUFFIX, "CMR bSSFP")


def cmr_route(arithmetic: str = DEFAULT_MR_ARITHMETIC) -> Route:
    """The route and parameters recorded in the output folder's manifest."""
    return mr_route("CMR", TARGET_SPACING, LABEL_VALUES, arithmetic)


def preprocess_cmr_volume(image_path: str, label_path: str,
                          arithmetic: str = DEFAULT_MR_ARITHMETIC) -> ProcessedVolume:
    return preprocess_nifti_mr_pair((image_path, label_path), LABEL_VALUES, TARGET_SPACING,
                                    arithmetic)


def preprocess_cmr(raw_dir: str, out_dir: str, overwrite: bool = False,
                   arithmetic: str = DEFAULT_MR_ARITHMETIC) -> List[str]:
    """Pre-process every CMR volume under `raw_dir` into `out_dir`; returns the output paths."""
    route = cmr_route(arithmetic)  # rejects an unknown arithmetic before any work
    return run_preprocessing(find_cmr_pairs(raw_dir), out_dir,
                             lambda pair: validate_nifti_pair(pair, LABEL_VALUES),
                             lambda pair: preprocess_cmr_volume(*pair, arithmetic=arithmetic),
                             overwrite, "CMR", raw_dir=raw_dir, route=route,
                             describe=nifti_pair_case)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m fafnet.preprocessing.cmr", __doc__,
                          "raw MS-CMRSeg folder holding patient<N>_C0.nii.gz images and "
                          "patient<N>_C0_manual.nii.gz labels (any sub-folder)")
    add_arithmetic_argument(parser)
    arithmetic = parse_arithmetic(parser, argv)
    run_cli(parser, argv, functools.partial(preprocess_cmr, arithmetic=arithmetic), "CMR")


if __name__ == "__main__":
    main()
