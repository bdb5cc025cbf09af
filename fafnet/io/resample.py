"""Resampling between grids for the experiments and for segmenting new scans (not the
pre-processing routes, whose resampling follows the release's arithmetic in
fafnet/preprocessing/common.py).

- `resample_in_plane`: every slice of a volume to another in-plane size over the same field
  of view (the experiments' `resample_in_plane` option). It works in index space, slice by
  slice, with OpenCV's pixel-centre conventions: linear for images (INTER_LINEAR; halving the
  size averages each 2 x 2 block), nearest for labels and supervoxels (INTER_NEAREST_EXACT,
  which takes the pixel whose centre is nearest, the lower right one of a 2 x 2 block on a
  tie). Index space makes the result exact and the same on every machine: a resampler in
  world coordinates meets rounding in oblique directions and breaks nearest-neighbour ties
  differently from voxel to voxel.
- `resample_onto`: a volume onto any other grid in world coordinates (SimpleITK), used to
  bring a prediction back onto a scan's own grid.
"""
from typing import Sequence, Tuple

import cv2
import numpy as np

from fafnet.io.nifti import Geometry

INTERPOLATIONS = ("linear", "nearest")
_CV2_FLAGS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT}
# OpenCV resizes these types; other integer labels go through int32.
_CV2_TYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")


def shifted_origin(geometry: Geometry, index_offset_xyz: Sequence[float]) -> Tuple[float, ...]:
    """The world position of the (fractional) voxel index `index_offset_xyz` (x, y, z)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    step = np.asarray(index_offset_xyz, dtype=np.float64) * np.asarray(geometry.spacing)
    return tuple(float(v) for v in np.asarray(geometry.origin, dtype=np.float64) + direction @ step)


def in_plane_grid(geometry: Geometry, shape_zyx: Sequence[int], size_yx: Sequence[int]) -> Geometry:
    """The grid of `size_yx` pixels per slice covering the same field of view as a (z, y, x)
    grid of `shape_zyx` with `geometry`: the outer pixel edges stay in place, so the spacing
    scales by old size / new size and the first pixel centre moves half a new pixel minus
    half an old one inwards."""
    (n_y, n_x), (m_y, m_x) = shape_zyx[1:], size_yx
    spacing_x, spacing_y, spacing_z = geometry.spacing
    new_spacing = (spacing_x * n_x / m_x, spacing_y * n_y / m_y, spacing_z)
    offset = ((n_x / m_x - 1) / 2, (n_y / m_y - 1) / 2, 0.0)   # in old voxel units
    return Geometry(tuple(float(v) for v in new_spacing), shifted_origin(geometry, offset), geometry.direction)


def resample_in_plane(array: np.ndarray, geometry: Geometry, size_yx: Sequence[int],
                      interpolation: str) -> Tuple[np.ndarray, Geometry]:
    """Every slice of a (z, y, x) volume resampled to `size_yx` pixels over the same field of
    view (see the module docstring); returns the array, in its own dtype, and its geometry
    (`in_plane_grid`). The identity when the size is already `size_yx`."""
    _check_interpolation(interpolation)
    size_yx = tuple(int(n) for n in size_yx)
    if tuple(array.shape[1:]) == size_yx:
        return array, geometry
    work = array if array.dtype in _CV2_TYPES else array.astype(np.int32 if interpolation == "nearest"
                                                                 else np.float32)
    if work.dtype == np.int32 and not np.array_equal(work, array):
        raise ValueError(f"labels with values beyond int32 cannot be resampled (max {array.max()})")
    if interpolation == "linear" and not np.issubdtype(work.dtype, np.floating):
        work = work.astype(np.float32)
    out = np.stack([cv2.resize(np.ascontiguousarray(s), (size_yx[1], size_yx[0]),
                               interpolation=_CV2_FLAGS[interpolation]) for s in work])
    return out.astype(array.dtype, copy=False), in_plane_grid(geometry, array.shape, size_yx)


def resample_onto(array: np.ndarray, geometry: Geometry, target: Geometry, target_shape_zyx: Sequence[int],
                  interpolation: str) -> np.ndarray:
    """`array` (z, y, x, with `geometry`) sampled at the voxel centres of another grid in world
    coordinates (SimpleITK), in its own pixel type; points outside the input get 0."""
    _check_interpolation(interpolation)
    import SimpleITK as sitk  # only here: the experiments run without SimpleITK

    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    interpolator = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, [int(n) for n in target_shape_zyx[::-1]], sitk.Transform(), interpolator,
                        target.origin, target.spacing, target.direction, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def slice_positions_on(geometry: Geometry, shape_zyx: Sequence[int], target: Geometry) -> np.ndarray:
    """float64 [Z]: where each slice of a (z, y, x) grid (`geometry`, `shape_zyx`) lies on
    another grid `target`, as a continuous slice index of `target` (slice k's centre is at
    k), taken at the slice's in-plane centre. Maps between a scan's own slices and the slices
    it has after pre-processing (which may resample z) in either direction."""
    n_z, n_y, n_x = (int(n) for n in shape_zyx)
    index_xyz = np.stack([np.full(n_z, (n_x - 1) / 2), np.full(n_z, (n_y - 1) / 2),
                          np.arange(n_z, dtype=np.float64)], axis=1)
    world = _index_to_world(geometry) @ index_xyz.T + np.asarray(geometry.origin, dtype=np.float64)[:, None]
    offset = world - np.asarray(target.origin, dtype=np.float64)[:, None]
    return np.linalg.solve(_index_to_world(target), offset)[2]


def _index_to_world(geometry: Geometry) -> np.ndarray:
    """The 3 x 3 matrix from a voxel index step (x, y, z) to a world step (LPS, mm)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    return direction @ np.diag(np.asarray(geometry.spacing, dtype=np.float64))
