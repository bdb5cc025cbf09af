"""Pre-process CHAOS T2-SPIR abdominal MRI (CHAOST2) into the normalised layout
(docs/protocol.md section 12).

Raw layout (the challenge's MR training folder): RAW/<patient id>/T2SPIR/DICOM_anon/*.dcm, one
DICOM series per patient, and RAW/<patient id>/T2SPIR/Ground/*.png, one mask per slice with
grey values 0 (background), 63 (liver), 126 (right kidney), 189 (left kidney), 252 (spleen).
Steps per patient:
  1. read the series with SimpleITK (slices sorted by position; no external converter) and
     stack the masks, the i-th PNG in file order marking the i-th DICOM file in file order;
     grey values become 0..4 through the fixed table 63 liver, 126 right kidney, 189 left
     kidney, 252 spleen (ranking the grey values present, the release's way, gives the same
     labels when all four organs are present and mislabels a volume that lacks one);
  2. reverse the row axis of image and masks alike, with the geometry adjusted so that every
     voxel keeps its physical position: this reproduces the array layout of the literature's
     dcm2nii-converted volumes, whose masks the release flips along axis 1 to match;
  3. the MRI route: clip the top 0.5 % of intensities, resample to (1.25, 1.25, 7.70) mm with
     the size rule int(n * old / new + 1), crop or pad in-plane to 256 x 256 around the centre.
     By default (--arithmetic release) this runs in the series' integer pixel type, truncating
     the clip value and the resampled values as the literature's data was made; --arithmetic
     float computes in float32. The series' spacing is first rounded through float32
     (--dicom-spacing float32, the default, recorded in the manifest) because the release
     wrote each series to NIfTI and read it back before resampling, so its spacing passed
     through the header's float32 (1.62 -> 1.6200000047683716); --dicom-spacing exact
     resamples with the DICOM's decimal spacing (a grey level apart on a few voxels).
Patients are re-indexed 0..N-1 in numeric order of their ids: OUT/image_<i>.nii.gz, label_<i>.
The experiments read <data_root>/chaos_MR_T2_normalized, data_root defaulting to
./data_processed:

    python -m fafnet.preprocessing.chaost2 --raw-dir CHAOS_Train_Sets/Train_Sets/MR \\
        --out-dir data_processed/chaos_MR_T2_normalized
"""
import functools
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from fafnet.io.nifti import Geometry
from fafnet.io.raw import image_information, natural_sort_key
from fafnet.preprocessing.common import (DEFAULT_DICOM_SPACING, DEFAULT_MR_ARITHMETIC, DICOM_SPACINGS,
                                         ProcessedVolume, check_dicom_spacing, dicom_spacing_geometry, flip_rows,
                                         mr_route, preprocess_mr, require_dir, run_preprocessing)
from fafnet.preprocessing.command_line import add_arithmetic_argument, build_parser, parse_arithmetic, run_cli
from fafnet.preprocessing.manifest import RawCase, Route
from fafnet.io.scans import read_series, series_file_names

TARGET_SPACING = (1.25, 1.25, 7.70)   # (x, y, z) mm
GREY_TO_LABEL = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}


@dataclass(frozen=True)
class ChaosPatient:
    patient_id: str
    dicom_dir: str
    ground_dir: str


def find_chaos_patients(raw_dir: str) -> List[ChaosPatient]:
    """Every <patient id>/T2SPIR folder under `raw_dir`, in numeric order of the ids."""
    require_dir(raw_dir, "raw CHAOS MR")
    patients = []
    for name in sorted(os.listdir(raw_dir), key=natural_sort_key):
        t2spir = os.path.join(raw_dir, name, "T2SPIR")
        if os.path.isdir(t2spir):
            patients.append(ChaosPatient(
                name, require_dir(os.path.join(t2spir, "DICOM_anon"), f"patient {name} DICOM"),
                require_dir(os.path.join(t2spir, "Ground"), f"patient {name} ground-truth")))
    if not patients:
        raise FileNotFoundError(f"no <patient id>/T2SPIR folders found in {raw_dir}")
    return patients


def _files_with_suffix(folder: str, suffix: str) -> List[str]:
    names = [n for n in os.listdir(folder) if n.lower().endswith(suffix)]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_sort_key)]


def series_files(patient: ChaosPatient) -> Tuple[List[str], List[str]]:
    """(DICOM files in the series reader's slice order, DICOM files in file-name order)."""
    by_name = _files_with_suffix(patient.dicom_dir, ".dcm")
    if not by_name:
        raise FileNotFoundError(f"no .dcm files in {patient.dicom_dir}")
    return series_file_names(patient.dicom_dir, by_name, ".dcm files"), by_name


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"   # the empty IEND chunk every PNG ends with


def read_mask(path: str, shape: Tuple[int, int]) -> np.ndarray:
    """One ground-truth PNG as a (rows, columns) uint8 map of labels 0..4."""
    with open(path, "rb") as f:
        data = f.read()
    # A truncated PNG is caught here, in one line, before libpng complains on stderr.
    if not data.startswith(PNG_SIGNATURE) or not data.endswith(PNG_END):
        raise ValueError(f"mask {path} is truncated or not a PNG file ("
                         + ("no PNG signature" if not data.startswith(PNG_SIGNATURE)
                            else "it does not end with the IEND chunk") + ")")
    grey = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if grey is None:
        raise ValueError(f"cannot read mask {path}")
    if grey.ndim == 3:  # an RGB(A) save of a grey mask: every colour channel must agree
        channels = range(min(3, grey.shape[2]))
        if not all(np.array_equal(grey[..., 0], grey[..., c]) for c in channels):
            raise ValueError(f"mask {path} is a colour image; expected grey values")
        grey = grey[..., 0]
    if grey.shape != tuple(shape):
        raise ValueError(f"mask {path} has shape {grey.shape} but its DICOM slices are "
                         f"{tuple(shape)}")
    unknown = sorted(set(np.unique(grey).tolist()) - set(GREY_TO_LABEL))
    if unknown:
        raise ValueError(f"mask {path} holds grey value(s) {unknown}; CHAOS defines "
                         f"{sorted(GREY_TO_LABEL)}")
    lookup = np.zeros(max(256, int(grey.max()) + 1), dtype=np.uint8)
    for grey_value, label in GREY_TO_LABEL.items():
        lookup[grey_value] = label
    return lookup[grey]


def read_masks(patient: ChaosPatient, by_position: List[str], by_name: List[str],
               shape: Tuple[int, int]) -> np.ndarray:
    """Stack the PNG masks in the series' slice order: (z, rows, columns) uint8."""
    pngs = _files_with_suffix(patient.ground_dir, ".png")
    if len(pngs) != len(by_name):
        raise ValueError(f"{patient.ground_dir} holds {len(pngs)} PNG masks but "
                         f"{patient.dicom_dir} holds {len(by_name)} DICOM slices")
    mask_of_file = {os.path.abspath(dcm): png for dcm, png in zip(by_name, pngs)}
    return np.stack([read_mask(mask_of_file[os.path.abspath(dcm)], shape) for dcm in by_position])


def _slice_shape(dicom_path: str) -> Tuple[int, int]:
    reader = image_information(dicom_path, f"DICOM {dicom_path}")
    columns, rows = reader.GetSize()[:2]
    return rows, columns


def validate_chaos_patient(patient: ChaosPatient) -> None:
    """Raise if the series, the masks, their count, shapes or grey values are not usable."""
    by_position, by_name = series_files(patient)
    read_masks(patient, by_position, by_name, _slice_shape(by_name[0]))


def read_chaos_patient(patient: ChaosPatient) -> Tuple[np.ndarray, np.ndarray, Geometry]:
    """The T2-SPIR volume in the series' own pixel type (the integer type of the DICOM data),
    its label map (uint8, 0..4), both (z, y, x) in DICOM row order, and the series geometry."""
    by_position, by_name = series_files(patient)
    # The raw pixel type (int16 for CHAOS) is kept: the release's arithmetic (see preprocess_mr).
    array, geometry, _ = read_series(by_position, patient.dicom_dir)
    label = read_masks(patient, by_position, by_name, array.shape[1:])
    return array, label, geometry


def chaos_case(patient: ChaosPatient) -> RawCase:
    """The raw files of one patient for the manifest: every DICOM slice and PNG mask."""
    return RawCase(patient.patient_id,
                   {"image": _files_with_suffix(patient.dicom_dir, ".dcm"),
                    "label": _files_with_suffix(patient.ground_dir, ".png")})


def chaos_route(arithmetic: str = DEFAULT_MR_ARITHMETIC, dicom_spacing: str = DEFAULT_DICOM_SPACING) -> Route:
    """The route and parameters recorded in the output folder's manifest."""
    check_dicom_spacing(dicom_spacing)
    return mr_route("CHAOST2", TARGET_SPACING, GREY_TO_LABEL.values(), arithmetic, row_flip=True,
                    grey_to_label={str(k): v for k, v in GREY_TO_LABEL.items()}, dicom_spacing=dicom_spacing)


def preprocess_chaos_arrays(image: np.ndarray, label: Optional[np.ndarray], geometry: Geometry,
                            arithmetic: str = DEFAULT_MR_ARITHMETIC, row_flip: bool = True,
                            dicom_spacing: str = DEFAULT_DICOM_SPACING) -> ProcessedVolume:
    """Steps 2-3 above on a DICOM-ordered (z, y, x) volume and its label map (or None) with
    `geometry`, its spacing rounded as `dicom_spacing` says (a NIfTI file's spacing is float32
    already). `row_flip=False` skips step 2, for arrays already in the dcm2nii layout (the
    literature's NIfTI files)."""
    geometry = dicom_spacing_geometry(geometry, dicom_spacing)
    if row_flip:
        if label is not None:
            label, _ = flip_rows(label, geometry)
        image, geometry = flip_rows(image, geometry)
    return preprocess_mr(image, label, geometry, TARGET_SPACING, arithmetic=arithmetic)


def preprocess_chaos_patient(patient: ChaosPatient, arithmetic: str = DEFAULT_MR_ARITHMETIC,
                             dicom_spacing: str = DEFAULT_DICOM_SPACING) -> ProcessedVolume:
    image, label, geometry = read_chaos_patient(patient)
    return preprocess_chaos_arrays(image, label, geometry, arithmetic, dicom_spacing=dicom_spacing)


def preprocess_chaos(raw_dir: str, out_dir: str, overwrite: bool = False, arithmetic: str = DEFAULT_MR_ARITHMETIC,
                     dicom_spacing: str = DEFAULT_DICOM_SPACING) -> List[str]:
    """Pre-process every CHAOS T2-SPIR patient under `raw_dir` into `out_dir`."""
    route = chaos_route(arithmetic, dicom_spacing)  # rejects an unknown value before any work
    process = functools.partial(preprocess_chaos_patient, arithmetic=arithmetic, dicom_spacing=dicom_spacing)
    return run_preprocessing(find_chaos_patients(raw_dir), out_dir, validate_chaos_patient, process,
                             overwrite, "CHAOST2", raw_dir=raw_dir, route=route, describe=chaos_case)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser("python -m fafnet.preprocessing.chaost2", __doc__,
                          "raw CHAOS MR folder holding <patient id>/T2SPIR/DICOM_anon "
                          "and <patient id>/T2SPIR/Ground")
    add_arithmetic_argument(parser)
    parser.add_argument("--dicom-spacing", choices=DICOM_SPACINGS, default=DEFAULT_DICOM_SPACING,
                        help="'float32' (default): round the series' spacing through float32 before "
                             "resampling, as the release's NIfTI round trip did (1.62 -> 1.6200000047683716); "
                             "'exact': the DICOM's decimal spacing. Recorded in the manifest")
    arithmetic = parse_arithmetic(parser, argv)
    spacing = parser.parse_known_args(argv)[0].dicom_spacing
    run_cli(parser, argv, functools.partial(preprocess_chaos, arithmetic=arithmetic, dicom_spacing=spacing),
            "CHAOST2")


if __name__ == "__main__":
    main()
