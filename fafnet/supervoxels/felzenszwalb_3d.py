"""3D Felzenszwalb graph segmentation (docs/protocol.md section 13, steps 1 to 5).

`felzenszwalb_3d` validates its input, smooths, and hands the volume to the compiled module
`fafnet.supervoxels._felzenszwalb_3d`, which keeps one 8-byte sort key per edge instead of the
separate 64-bit edge and weight arrays of a straightforward port (see that module's docstring).
"""
import importlib
import numbers
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

BUILD_HINT = ("run `make setup` (or `.venv/bin/python setup.py build_ext --inplace`) "
              "in the repository root to compile it")

# The 13 forward neighbours of the 26-neighbourhood, as (slice, row, column) steps:
# 4 in-plane, 1 along the slice axis, 4 slice+row/column diagonals, 4 3D diagonals.
NEIGHBOUR_OFFSETS = (
    (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1),
    (1, 0, 0),
    (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1),
    (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
)


def load_extension():
    """The compiled core; a clear ImportError says how to build it when it is missing."""
    try:
        return importlib.import_module("fafnet.supervoxels._felzenszwalb_3d")
    except ImportError as err:
        raise ImportError(f"the compiled supervoxel module fafnet.supervoxels._felzenszwalb_3d "
                          f"is not built ({err}); {BUILD_HINT}") from err


def neighbour_weight_factors(spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Offsets (13, 3) int64 and weight factors w (13,) float64 of the 26-neighbourhood.

    With s = spacing[0] / spacing[1]: w = 1 in-plane, s^2 along the slice axis,
    (1 + s^2) / 2 for slice+row or slice+column diagonals, (2 + s^2) / 3 for 3D diagonals.
    """
    s = float(spacing[0]) / float(spacing[1])
    # Edges that leave the slice, keyed by how many axes they move along.
    across_slices = {1: s ** 2, 2: (1 + s ** 2) / 2, 3: (2 + s ** 2) / 3}
    offsets = np.array(NEIGHBOUR_OFFSETS, dtype=np.int64)
    factors = np.array([1.0 if dz == 0 else across_slices[1 + abs(dy) + abs(dx)]
                        for dz, dy, dx in NEIGHBOUR_OFFSETS], dtype=np.float64)
    return offsets, factors


def felzenszwalb_3d(image, scale=1, sigma=0.8, min_size=20, spacing=(1, 1, 1)) -> np.ndarray:
    """Segment a volume into supervoxels with Felzenszwalb's graph method in 3D.

    Args:
        image: (D, H, W) real array, slice axis first. Intensities are used as given (as
            float64); the supervoxel pipeline rescales them to [0, 255] first.
        scale: larger gives larger components; k = scale / 255 in the merge criterion.
        sigma: Gaussian smoothing in voxels of unit spacing; the per-axis sigma is
            sigma / spacing[axis]. 0 disables smoothing (the release's setting).
        min_size: components smaller than this are merged into a neighbour (second pass).
        spacing: voxel spacing per array axis (slice, row, column); only
            spacing[0] / spacing[1] enters the edge weights.

    Returns:
        (D, H, W) int32 labels 0..n-1, numbered in order of each component's first voxel in
        raster order.
    """
    volume = _checked_image(image)
    spacing = _checked_spacing(spacing)
    scale, sigma, min_size = _checked_parameters(scale, sigma, min_size)
    extension = load_extension()
    if volume.size > extension.MAX_VOXELS:
        raise ValueError(f"image has {volume.size} voxels; at most {extension.MAX_VOXELS} "
                         f"are supported")
    if sigma > 0:
        volume = ndimage.gaussian_filter(volume, sigma=sigma / np.asarray(spacing))
    offsets, factors = neighbour_weight_factors(spacing)
    return extension.segment_volume(volume, offsets, factors, scale / 255.0, min_size)


def _checked_image(image) -> np.ndarray:
    volume = np.asarray(image)
    if volume.ndim != 3:
        raise ValueError(f"image must be a 3D (slice, row, column) array, got shape {volume.shape}")
    if volume.size == 0:
        raise ValueError(f"image is empty, shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)
            or volume.dtype == np.bool_):
        raise ValueError(f"image must hold real numbers, got dtype {volume.dtype}")
    volume = np.ascontiguousarray(volume, dtype=np.float64)
    if not np.isfinite(volume).all():
        raise ValueError("image contains NaN or infinite values")
    return volume


def _checked_spacing(spacing) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in np.ravel(spacing))
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be three positive numbers (slice, row, column), "
                         f"got {spacing!r}")
    return values


def _checked_parameters(scale, sigma, min_size):
    if not (np.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a non-negative number, got {scale!r}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")
    if not isinstance(min_size, numbers.Integral) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    return float(scale), float(sigma), int(min_size)
