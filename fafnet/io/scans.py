"""Reading one scan as it comes from a scanner or a viewer: a NIfTI file or a folder holding
one DICOM series (SimpleITK's ImageSeriesReader, slices in position order). The CHAOS
pre-processing reads its DICOM series here too.

Reading is strict, as everywhere in the project: a folder without a DICOM series, with several,
or with DICOM files that the series leaves out (GDCM drops unreadable or truncated files from a
series without a word) is an error naming the folder and the files; so are pixel data that
cannot be decoded and NaN or infinite voxels. A series whose slices are not evenly spaced (a
missing slice leaves a gap) is refused too, naming the folder, the two slice positions and the
spacing expected and found: ITK would read it as evenly spaced, putting every slice after the
gap, and every label drawn on it, in the wrong place.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from fafnet.io.nifti import NIFTI_SUFFIXES, Geometry, check_finite
from fafnet.io.raw import image_information, itk_error_text, natural_sort_key, read_raw_image, strip_nifti_suffix

_DICOM_PREAMBLE = 128          # bytes before the "DICM" magic of a DICOM Part 10 file
_MODALITY_TAG = "0008|0060"
_POSITION_TAG, _ORIENTATION_TAG = "0020|0032", "0020|0037"   # Image Position / Orientation (Patient)
# Consecutive slices may lie this fraction of the series' spacing (the median step) closer or
# farther apart than it (scanners round positions); more is a gap (a missing slice) or an
# uneven series, refused.
SLICE_SPACING_TOLERANCE = 0.1


@dataclass(frozen=True)
class Scan:
    """A scan read as stored: `array` (z, y, x) in its own pixel type, its geometry, what it
    was read from ("nifti" or "dicom"), its DICOM Modality tag (None for NIfTI or when absent)."""
    path: str
    array: np.ndarray
    geometry: Geometry
    kind: str
    modality: Optional[str] = None

    @property
    def name(self) -> str:
        return scan_name(self.path)


def scan_name(path: str) -> str:
    """A scan's name: its file name without the NIfTI suffix, or its DICOM folder's name."""
    base = os.path.basename(os.path.normpath(path))
    return strip_nifti_suffix(base) or base


def looks_like_dicom(path: str) -> bool:
    """A '.dcm' file, or any file with the DICOM Part 10 magic "DICM" after its preamble."""
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(_DICOM_PREAMBLE + 4)
    except OSError:
        return False
    return head[_DICOM_PREAMBLE:] == b"DICM"


def dicom_candidates(folder: str) -> List[str]:
    """The files of `folder` (not its sub-folders) that look like DICOM, in natural order."""
    names = sorted(os.listdir(folder), key=natural_sort_key)
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    return [p for p in paths if looks_like_dicom(p)]


def series_file_names(folder: str, expected: Sequence[str], what: str = "DICOM files") -> List[str]:
    """The files of the one DICOM series in `folder`, in slice-position order; every file of
    `expected` (the folder's DICOM files, called `what` in messages) must be in it."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if len(series_ids) != 1:
        raise ValueError(f"{folder} must hold exactly one DICOM series, found {len(series_ids)}")
    by_position = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_ids[0]))
    left_out = sorted(set(map(os.path.abspath, expected)) - set(map(os.path.abspath, by_position)),
                      key=natural_sort_key)
    if left_out or len(by_position) != len(expected):
        # GDCM leaves unreadable (for example truncated) files out of the series.
        raise ValueError(f"{folder}: the series has {len(by_position)} files but the "
                         f"folder holds {len(expected)} {what}"
                         + (f"; not in the series (unreadable, truncated or from another "
                            f"series): {', '.join(os.path.basename(p) for p in left_out[:5])}"
                            + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
                            if left_out else ""))
    return by_position


def _numbers(text: str, count: int) -> Optional[np.ndarray]:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (count,) else None


def slice_positions(files: Sequence[str]) -> Optional[np.ndarray]:
    """Each file's position (mm) along its slices' normal, from its Image Position and Image
    Orientation (Patient) tags; None when a file lacks them (no check is possible then)."""
    positions = []
    for path in files:
        reader = image_information(path, f"DICOM file {path}")
        if not (reader.HasMetaDataKey(_POSITION_TAG) and reader.HasMetaDataKey(_ORIENTATION_TAG)):
            return None
        position = _numbers(reader.GetMetaData(_POSITION_TAG), 3)
        orientation = _numbers(reader.GetMetaData(_ORIENTATION_TAG), 6)
        if position is None or orientation is None:
            return None
        positions.append(float(np.dot(np.cross(orientation[:3], orientation[3:]), position)))
    return np.asarray(positions)


def check_slice_spacing(files: Sequence[str], folder: str) -> None:
    """Refuse a series (files in position order) whose consecutive slices are not evenly
    spaced within SLICE_SPACING_TOLERANCE, naming the folder, where and by how much."""
    positions = slice_positions(files) if len(files) > 2 else None
    if positions is None:
        return
    steps = np.abs(np.diff(positions))
    expected = float(np.median(steps))
    for k, step in enumerate(steps):
        if abs(step - expected) > SLICE_SPACING_TOLERANCE * expected or step == 0:
            what = "a gap (a missing slice?)" if step > expected else "slices closer than the rest"
            raise ValueError(
                f"{folder}: the DICOM series is not evenly spaced: {what} between slice positions "
                f"{positions[k]:.6g} and {positions[k + 1]:.6g} mm ({os.path.basename(files[k])} and "
                f"{os.path.basename(files[k + 1])}): expected spacing {expected:.6g} mm, found {step:.6g} mm; "
                f"read as evenly spaced, every slice after it would be misplaced")


def read_series(files: Sequence[str], folder: str) -> Tuple[np.ndarray, Geometry, Optional[str]]:
    """The DICOM files of one series (in slice order) as a (z, y, x) array in the series' own
    pixel type, its geometry and its Modality tag; decoding errors and non-finite voxels are
    errors naming `folder`, and so is a gap between slices (`check_slice_spacing`)."""
    check_slice_spacing(files, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ValueError(f"cannot read the DICOM series in {folder}: {itk_error_text(err)}") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ValueError(f"the DICOM series in {folder} is not a 3D volume of one value per voxel")
    array = sitk.GetArrayFromImage(image)
    check_finite(array, f"DICOM series {folder}")
    modality = reader.GetMetaData(0, _MODALITY_TAG).strip() if reader.HasMetaDataKey(0, _MODALITY_TAG) else None
    return array, Geometry.of(image), modality or None


def read_dicom_folder(folder: str) -> Scan:
    """The one DICOM series of `folder` (every file that looks like DICOM must belong to it)."""
    candidates = dicom_candidates(folder)
    if not candidates:
        raise ValueError(f"{folder} holds no DICOM files (a folder of one DICOM series, or a NIfTI "
                         "file, is expected)")
    files = series_file_names(folder, candidates)
    array, geometry, modality = read_series(files, folder)
    return Scan(folder, array, geometry, "dicom", modality)


def read_scan(path: str, what: str = "scan") -> Scan:
    """A NIfTI file (`read_raw_image`: read completely, finite) or a DICOM series folder;
    `what` names the argument in errors ("--query")."""
    if os.path.isdir(path):
        return read_dicom_folder(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path}: no such file or folder")
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{what} {path}: expected a NIfTI file (.nii or .nii.gz) or a folder of one "
                         "DICOM series")
    array, geometry = read_raw_image(path)
    return Scan(path, array, geometry, "nifti")
