"""Raw scans as the release's notebooks read them: SimpleITK's header geometry, ITK's error
text, and the natural order of file names."""
import os
import re
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from fafnet.io.nifti import NIFTI_SUFFIXES, Geometry, read_volume


def natural_sort_key(path: str) -> Tuple:
    """Sort key that orders embedded integers numerically ('patient2' before 'patient10');
    for zero-padded names (img0001, img0002, ...) it equals plain lexicographic order."""
    name = os.path.basename(os.path.normpath(path))
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def strip_nifti_suffix(name: str) -> Optional[str]:
    """'img0001.nii.gz' -> 'img0001'; None when the name is not a NIfTI file."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def itk_error_text(err: RuntimeError) -> str:
    """The informative last line of an ITK exception (the rest is a C++ source location)."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else "unknown ITK error"


def read_raw_image(path: str) -> Tuple[np.ndarray, Geometry]:
    """A raw NIfTI image read completely (a truncated or damaged file is an error) as a
    (z, y, x) array in the file's own dtype, with only finite voxels, and its geometry as
    SimpleITK reads it (`release_geometry`)."""
    array, geometry = read_volume(path, dtype=None, require_finite=True)
    if array.ndim != 3:
        raise ValueError(f"image {path} is not a 3D volume (array shape {array.shape})")
    return array, release_geometry(path, geometry)


# Largest difference between SimpleITK's and nibabel's reading of one header that is taken
# for float32 rounding (spacing relative, direction cosines, origin in mm).
_GEOMETRY_TOLERANCE = 1e-4


def image_information(path: str, what: str) -> sitk.ImageFileReader:
    """A SimpleITK reader of `path` with its header read (no voxels); an unreadable header is
    a ValueError saying it cannot read `what`."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"cannot read {what}: {itk_error_text(err)}") from None
    return reader


def release_geometry(path: str, geometry: Geometry) -> Geometry:
    """The geometry SimpleITK reads from the NIfTI header of `path`, after checking that it
    is `geometry` (nibabel's reading) up to rounding.

    The release's notebooks read their volumes with SimpleITK, which takes the spacing from
    pixdim; nibabel's affine gives it as column norms of the float32 sform, which differ in
    the 8th digit for an oblique direction. Resampling integer data truncates every
    interpolated value, and on the other spacing some values land a rounding error below an
    integer and truncate one grey level lower than the release's (about 1 voxel in 5000)."""
    reader = image_information(path, f"the header of {path} with SimpleITK")
    dimension = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    itk = Geometry(tuple(float(v) for v in reader.GetSpacing()[:3]), tuple(float(v) for v in reader.GetOrigin()[:3]),
                   tuple(float(v) for v in direction.ravel()))
    agree = (np.allclose(itk.spacing, geometry.spacing, rtol=_GEOMETRY_TOLERANCE, atol=0)
             and np.allclose(itk.direction, geometry.direction, rtol=0, atol=_GEOMETRY_TOLERANCE)
             and np.allclose(itk.origin, geometry.origin, rtol=0, atol=_GEOMETRY_TOLERANCE))
    if not agree:
        raise ValueError(f"{path}: SimpleITK and nibabel read different geometries from its header "
                         f"(spacing {itk.spacing} vs {geometry.spacing}, origin {itk.origin} vs "
                         f"{geometry.origin}); are its qform and sform inconsistent?")
    return itk
