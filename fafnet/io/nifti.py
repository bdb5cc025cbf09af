"""The project's one NIfTI reader and writer.

Arrays are in (slice, row, column) = (z, y, x) order, as everywhere in this project.
`Geometry` carries spacing, origin and direction in SimpleITK's (x, y, z) order and LPS world
convention, so a written volume overlays its source in any viewer and the pre-processing
steps can hand it to SimpleITK's resampler unchanged.

Reading is strict: NIfTI files are read with nibabel, which keeps NaN and infinite voxels as
they are (SimpleITK's reader returns them as 0), and the whole gzip stream is decompressed
and checked (length and CRC) before the header is parsed, so a truncated or damaged file is an
error naming it instead of a volume padded with zeros. Non-finite voxels are counted and, where
a finite image is required, rejected with the file and the count.

SimpleITK is not imported here: a machine without it can still read and write volumes.
"""
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from fafnet.io.atomic import atomic_write_bytes

if TYPE_CHECKING:  # only for annotations; SimpleITK images are used through their methods
    import SimpleITK as sitk

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"
# NIfTI stores a RAS world (x to the Right, y Anterior); SimpleITK and DICOM use LPS. The two
# differ by the sign of x and y.
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
# NIfTI xform code 1 (scanner-based anatomical coordinates), written in both qform and sform,
# as SimpleITK writes it, so that every reader picks the same transform.
_XFORM_SCANNER = 1


@dataclass(frozen=True)
class Geometry:
    spacing: Tuple[float, ...]    # (x, y, z), millimetres
    origin: Tuple[float, ...]     # (x, y, z), LPS millimetres
    direction: Tuple[float, ...]  # row-major 3 x 3 LPS direction cosines

    @classmethod
    def of(cls, image: "sitk.Image") -> "Geometry":
        """The geometry of a SimpleITK image."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply(self, image: "sitk.Image") -> "sitk.Image":
        """Set this geometry on a SimpleITK image (in place) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def array_spacing(self) -> Tuple[float, ...]:
        """Spacing in array axis order (z, y, x)."""
        return tuple(reversed(self.spacing))

    def affine(self) -> np.ndarray:
        """The NIfTI (RAS) 4 x 4 affine mapping a voxel index (x, y, z, 1) to the world."""
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _RAS_FROM_LPS @ direction @ np.diag(np.asarray(self.spacing, np.float64))
        affine[:3, 3] = _RAS_FROM_LPS @ np.asarray(self.origin, dtype=np.float64)
        return affine

    @classmethod
    def from_affine(cls, affine: np.ndarray, path: str = "volume") -> "Geometry":
        """The geometry of a NIfTI (RAS) 4 x 4 affine: spacing from its column lengths,
        direction from its normalised columns, both turned into LPS."""
        lps = _RAS_FROM_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing = np.linalg.norm(lps, axis=0)
        if not np.all(np.isfinite(lps)) or np.any(spacing == 0):
            raise ValueError(f"{path} has a degenerate voxel-to-world transform {lps.tolist()}")
        direction = _nearest_rotation(lps / spacing)
        origin = _RAS_FROM_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]
        return cls(tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                   tuple(float(v) for v in direction.ravel()))


def _nearest_rotation(direction: np.ndarray) -> np.ndarray:
    """The orthonormal matrix nearest to `direction` when it is orthonormal up to the float32
    rounding of the NIfTI header (a sheared transform is kept as it is)."""
    if np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        u, _, vt = np.linalg.svd(direction)
        nearest = u @ vt
        # Snap the exact zeros and ones of axis-aligned directions back after the SVD.
        return np.where(np.abs(nearest - np.rint(nearest)) < 1e-12, np.rint(nearest), nearest)
    return direction


# ----------------------------------------------------------------------------- grids

# Two files lie on one voxel grid when their corner voxels coincide within this fraction of a
# voxel: NIfTI headers hold float32 transforms, so equal grids differ by rounding only.
GRID_TOLERANCE_VOXELS = 0.01
# What a file written from a bare array carries (SimpleITK's and nibabel's defaults): unit
# spacing, zero origin, identity direction. The supervoxels the FSMIS community distributes
# are stored so.
NO_GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _corner_points(geometry: Geometry, shape_zyx: Tuple[int, ...]) -> np.ndarray:
    """World (RAS) positions of the 8 corner voxel centres of a (z, y, x) grid, [8, 3]."""
    extent = np.asarray(shape_zyx[::-1], dtype=np.float64) - 1
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    voxels = np.hstack([corners * extent, np.ones((8, 1))])
    return (geometry.affine() @ voxels.T).T[:, :3]


def same_grid(a: Geometry, shape_a: Tuple[int, ...], b: Geometry, shape_b: Tuple[int, ...]) -> bool:
    """Whether two (z, y, x) grids have the same shape and voxel positions (within
    `GRID_TOLERANCE_VOXELS` of the smaller spacing)."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    tolerance = GRID_TOLERANCE_VOXELS * min(min(a.spacing), min(b.spacing))
    return bool(np.abs(_corner_points(a, shape_a) - _corner_points(b, shape_b)).max() <= tolerance)


def has_no_geometry(geometry: Geometry) -> bool:
    """Whether a file carries the default geometry of a bare array (`NO_GEOMETRY`)."""
    return all(np.allclose(getattr(geometry, f), getattr(NO_GEOMETRY, f), rtol=0, atol=1e-6)
               for f in ("spacing", "origin", "direction"))


def _axes_text(transform: np.ndarray) -> str:
    """nibabel's orientation transform as 'x, y, z -> -x, y, z' (file axes -> image axes)."""
    targets = [("-" if flip < 0 else "") + "xyz"[int(axis)] for axis, flip in transform]
    return "x, y, z -> " + ", ".join(targets)


def _geometry_difference(geometry: Geometry, reference: Geometry) -> str:
    parts = []
    for field in ("spacing", "origin", "direction"):
        mine, theirs = np.round(getattr(geometry, field), 4), np.round(getattr(reference, field), 4)
        if not np.allclose(mine, theirs, rtol=0, atol=1e-3):
            parts.append(f"{field} {tuple(mine.tolist())} vs {tuple(theirs.tolist())}")
    return "; ".join(parts) or "voxel positions differ"


def on_reference_grid(array: np.ndarray, geometry: Geometry, reference: Geometry,
                      reference_shape: Tuple[int, ...], path: str, reference_path: str,
                      allow_no_geometry: bool = True) -> Tuple[np.ndarray, Optional[str]]:
    """`array` (z, y, x, read from `path` with `geometry`) voxel for voxel on the grid of its
    reference image (`reference_path`), and a note of what was done (None when nothing).

    - Same grid (`same_grid`): returned as it is.
    - A file without geometry (`has_no_geometry`) of the reference's shape, when
      `allow_no_geometry`: taken to be stored on the reference's grid, as the release reads it
      (note says so).
    - The same grid stored with permuted or flipped axes (its header saying so): reoriented
      with nibabel's orientation tools (note names the axes).
    - Anything else (another spacing, origin, shape): ValueError naming both files.
    """
    if same_grid(geometry, array.shape, reference, reference_shape):
        return array, None
    if allow_no_geometry and has_no_geometry(geometry) and tuple(array.shape) == tuple(reference_shape):
        return array, "no geometry in the file: used on its image's voxel grid, as the release does"
    from nibabel import orientations

    transform = orientations.ornt_transform(orientations.io_orientation(geometry.affine()),
                                            orientations.io_orientation(reference.affine()))
    if not np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        xyz = orientations.apply_orientation(array.T, transform)
        affine = geometry.affine() @ orientations.inv_ornt_aff(transform, array.T.shape)
        reoriented = np.ascontiguousarray(xyz.T)
        if same_grid(Geometry.from_affine(affine, path), reoriented.shape, reference, reference_shape):
            return reoriented, f"stored with other axes ({_axes_text(transform)}): reoriented onto its image's grid"
    if tuple(array.shape) != tuple(reference_shape):
        raise ValueError(f"{path} has shape {tuple(array.shape)} but its image {reference_path} has shape "
                         f"{tuple(reference_shape)} (z, y, x), and its header does not map one grid onto "
                         "the other")
    raise ValueError(f"{path} does not lie on the voxel grid of its image {reference_path} "
                     f"({_geometry_difference(geometry, reference)}); store it on its image's grid")


# ----------------------------------------------------------------------------- reading

def count_non_finite(array: np.ndarray) -> Tuple[int, int]:
    """(NaN count, infinite count) of an array; (0, 0) for integer arrays."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0, 0
    nan = int(np.count_nonzero(np.isnan(array)))
    return nan, int(np.count_nonzero(np.isinf(array)))


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError naming the array (`name`, e.g. "volume /data/image_3.nii.gz") and
    the counts if any voxel is NaN or infinite."""
    nan, inf = count_non_finite(array)
    if nan or inf:
        raise ValueError(f"{name} has {nan + inf} non-finite voxel(s) of {array.size} "
                         f"({nan} NaN, {inf} infinite); finite values are required")


def integer_labels(labels: np.ndarray, path: str) -> np.ndarray:
    """The labels as int64 after checking they are finite, whole and non-negative (raises
    naming `path`): the one check of label values, for pre-processing and loading alike."""
    if np.issubdtype(labels.dtype, np.floating):
        check_finite(labels, f"label volume {path}")
        fractional = labels[np.mod(labels, 1) != 0]
        if fractional.size:
            raise ValueError(f"{path} holds {fractional.size} non-integer label value(s) such as "
                             f"{np.unique(fractional)[:5].tolist()}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path} holds negative label values such as "
                         f"{np.unique(labels[labels < 0])[:5].tolist()}")
    return labels


def _read_bytes(path: str) -> bytes:
    """The file's NIfTI bytes, decompressing a gzip stream completely (length and CRC are
    checked only at the end of the stream, so reading just the voxels would miss damage)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"volume file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"cannot read volume {path}: damaged or truncated gzip stream "
                             f"({err})") from None
    elif path.endswith(".gz"):
        raise ValueError(f"cannot read volume {path}: the name ends in .gz but the file is not "
                         "gzip-compressed")
    return data


def _nifti_class(header_bytes: bytes, path: str):
    """Nifti1Image or Nifti2Image, from the header size field (either byte order)."""
    import nibabel as nib  # imported on first use: importing nibabel takes a moment

    if len(header_bytes) >= 4:
        for order in ("little", "big"):
            size = int.from_bytes(header_bytes[:4], order)
            if size == 348:
                return nib.Nifti1Image
            if size == 540:
                return nib.Nifti2Image
    raise ValueError(f"cannot read volume {path}: not a NIfTI-1 or NIfTI-2 file "
                     f"({len(header_bytes)} bytes after decompression)")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _nifti_image(data: bytes, path: str):
    """A nibabel image parsed from a NIfTI file's (decompressed) bytes, its header checked."""
    nifti_class = _nifti_class(data, path)
    # nibabel also logs header problems to stderr; the error below says it in one line, so
    # its logger is muted while the header is parsed.
    header_logger = logging.getLogger("nibabel.global")
    was_disabled, header_logger.disabled = header_logger.disabled, True
    try:
        image = nifti_class.from_bytes(data)
    except Exception as err:  # nibabel raises several types for a malformed header
        raise ValueError(f"cannot read volume {path}: {_one_line(err)}") from None
    finally:
        header_logger.disabled = was_disabled
    shape = tuple(int(n) for n in image.header.get_data_shape())
    if not shape or min(shape) < 1:
        raise ValueError(f"cannot read volume {path}: its header gives the array shape {shape} "
                         "(x, y, z)")
    return image


def _xyz_data(image, path: str) -> np.ndarray:
    """Every voxel of a nibabel image, (x, y, z) order, with its scaling applied."""
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, ValueError, EOFError) as err:  # fewer voxel bytes than the header says
        raise ValueError(f"cannot read volume {path}: {_one_line(err)}") from None
    while data.ndim > 3 and data.shape[-1] == 1:    # a 4D header with a single time point
        data = data[..., 0]
    if data.dtype.kind not in "biuf":
        raise ValueError(f"volume {path} holds {data.dtype} voxels; expected one scalar per voxel")
    return data


def _geometry(image, path: str) -> Geometry:
    """The geometry of a nibabel NIfTI image. With neither a qform nor an sform, the NIfTI
    standard's fallback (and SimpleITK's): spacing from pixdim, origin 0, axes along RAS."""
    header = image.header
    if int(header["sform_code"]) > 0 or int(header["qform_code"]) > 0:
        return Geometry.from_affine(image.affine, path)
    zooms = [float(z) for z in header.get_zooms()[:3]] + [1.0] * (3 - len(header.get_zooms()[:3]))
    return Geometry.from_affine(np.diag(zooms + [1.0]), path)


def read_volume(path: str, dtype: Optional[np.dtype] = np.float32,
                require_finite: bool = False) -> Tuple[np.ndarray, Geometry]:
    """Read a NIfTI volume completely as a (z, y, x) array and its geometry.

    Args:
        dtype: the returned array's dtype; None keeps the file's (after its scaling).
        require_finite: reject NaN or infinite voxels (checked before any cast to `dtype`).
    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: naming `path`: a truncated or damaged file, not a NIfTI volume, or (with
            `require_finite`) non-finite voxels with their count.
    """
    path = os.fspath(path)
    image = _nifti_image(_read_bytes(path), path)
    # nibabel returns (x, y, z) in Fortran order, so the transpose is C-contiguous: no copy.
    array = np.ascontiguousarray(_xyz_data(image, path).T)
    if require_finite:
        check_finite(array, f"volume {path}")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, _geometry(image, path)


# ----------------------------------------------------------------------------- writing

def nifti_bytes(array: np.ndarray, geometry: Geometry, compress: bool = True) -> bytes:
    """A (z, y, x) array and its geometry as the bytes of a NIfTI-1 file (gzip-compressed,
    with a zero timestamp so equal volumes give equal files, when `compress`)."""
    import nibabel as nib

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = geometry.affine()
    image = nib.Nifti1Image(array.T, affine, dtype=array.dtype)
    image.header.set_qform(affine, code=_XFORM_SCANNER)
    image.header.set_sform(affine, code=_XFORM_SCANNER)
    image.header.set_xyzt_units("mm", "sec")
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def write_volume(array: np.ndarray, geometry: Geometry, path: str) -> None:
    """Write a (z, y, x) array with the given geometry as NIfTI (`.nii.gz` or `.nii`),
    atomically, so an interrupted run never leaves a truncated volume behind."""
    path = os.fspath(path)
    if np.ndim(array) != 3:
        raise ValueError(f"expected a 3D (z, y, x) array for {path}, got shape {np.shape(array)}")
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"cannot write {path}: volumes are written as .nii.gz or .nii")
    atomic_write_bytes(nifti_bytes(array, geometry, compress=path.endswith(".gz")), path)
