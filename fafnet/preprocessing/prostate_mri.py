"""Pre-process the cross-institution male pelvic MRI dataset (Prostate_MRI) into the
normalised layout (docs/protocol.md section 12).

Raw layout (the Zenodo record's data folder, any folder depth under RAW): images
<id>_img.nii[.gz] and labels <id>_mask.nii[.gz], paired by <id>. Labels 0..8: bladder, bone,
obturator internus, transition zone, central gland, rectum, seminal vesicle, neurovascular
bundle. Steps per volume: clip the top 0.5 % of intensities, resample to spacing
(1.25, 1.25, 7.70) mm (x, y, z) with the size rule int(n * old / new + 1), crop or pad
in-plane to 256 x 256 around the centre. By default (--arithmetic release) this runs in the
images' integer pixel type, truncating the clip value and the resampled values as on the
other MRI datasets; --arithmetic float computes in float32. The authors' release ships no
prostate pre-processing of its own; this is the literature's MRI route. Volumes are
re-indexed 0..N-1 in natural order of the ids: OUT/image_<i>.nii.gz, OUT/label_<i>.nii.gz.
The experiments read <data_root>/prostate_MR_normalized, data_root defaulting to
./data_processed:

    python -m fafnet.preprocessing.prostate_mri --raw-dir RAW \\
        --out-dir data_processed/prostate_MR_normalized
"""
import functools
from typing import List, Optional, Sequence, Tuple

from fafnet.preprocessing.common import (DEFAULT_MR_ARITHMETIC, ProcessedVolume, find_suffix_pairs, mr_route,
                                         nifti_pair_case, preprocess_nifti_mr_pair, run_preprocessing,
                                         validate_nifti_pair)
from fafnet.preprocessing.command_line import add_arithmetic_argument, build_parser, parse_arithmetic, run_cli
from fafnet.preprocessing.manifest import Route

TARGET_SPACING = (1.25, 1.25, 7.70)   # (x, y, z) mm
LABEL_VALUES = range(0, 9)
IMAGE_SUFFIX, LABEL_SUFFIX = "_img", "_mask"


def find_prostate_pairs(raw_dir: str) -> List[Tuple[str, str]]:
    """(image, label) path pairs under `raw_dir`, in natural order of the ids."""
    return find_suffix_pairs(raw_dir, IMAGE_SUFFIX, LABEL_SUFFIX, "prostate MRI")


def prostate_route(arithmetic: str = DEFAULT_MR_ARITHMETIC) -> Route:
    """The route and parameters recorded in the output folder's manifest."""
    return mr_route("Prostate_MRI", TARGET_SPACING, LABEL_VALUES, arithmetic)


def preprocess_prostate_volume(image_path: str, label_path: str,
                               arithmetic: str = DEFAULT_MR_ARITHMETIC) -> ProcessedVolume:
    return preprocess_nifti_mr_pair((image_path, label_path), LABEL_VALUES, TARGET_SPACING,
                                    arithmetic)


def preprocess_prostate(raw_dir: str, out_dir: str, overwrite: bool = False,
                        arithmetic: str = DEFAULT_MR_ARITHMETIC) -> List[str]:
    """Pre-process every prostate volume under `raw_dir` into `out_dir`; returns the paths."""
    route = prostate_route(arithmetic)  # rejects an unknown arithmetic before any work
    return run_preprocessing(find_prostate_pairs(raw_dir), out_dir,
                             lambda pair: validate_nifti_pair(pair, LABEL_VALUES),
                             lambda pair: preprocess_prostate_volume(*pair, arithmetic=arithmetic),
                             overwrite, "Prostate_MRI", raw_dir=raw_dir, route=route,
                             describe=nifti_pair_case)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m fafnet.preprocessing.prostate_mri", __doc__,
                          "raw folder holding <id>_img.nii[.gz] images and "
                          "<id>_mask.nii[.gz] labels (any sub-folder)")
    add_arithmetic_argument(parser)
    arithmetic = parse_arithmetic(parser, argv)
    run_cli(parser, argv, functools.partial(preprocess_prostate, arithmetic=arithmetic), "prostate")


if __name__ == "__main__":
    main()
