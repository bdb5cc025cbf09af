"""Reading and writing volumes with their geometry.

Arrays are in SimpleITK's (slice, row, column) = (z, y, x) order, as everywhere in this
project. `Geometry` carries spacing, origin and direction in SimpleITK's (x, y, z) order so
that a written volume overlays its source in any viewer.
"""
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Tuple

import numpy as np

if TYPE_CHECKING:   # for the annotations only; imported on first use below
    import SimpleITK


def _simpleitk():
    """SimpleITK, imported on first use: code that only needs `Geometry` or the arrays (the
    GPU benchmark, the synthetic generator's array functions) runs where it is not installed."""
    import SimpleITK
    return SimpleITK


@dataclass(frozen=True)
class Geometry:
    spacing: Tuple[float, ...]    # (x, y, z), millimetres
    origin: Tuple[float, ...]     # (x, y, z)
    direction: Tuple[float, ...]  # row-major 3 x 3 direction cosines

    @classmethod
    def of(cls, image: "SimpleITK.Image") -> "Geometry":
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply(self, image: "SimpleITK.Image") -> "SimpleITK.Image":
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def array_spacing(self) -> Tuple[float, ...]:
        """Spacing in array axis order (z, y, x)."""
        return tuple(reversed(self.spacing))


def read_volume(path: str, dtype=np.float32) -> Tuple[np.ndarray, Geometry]:
    """Read a NIfTI (or any SimpleITK-readable) volume as a (z, y, x) array and its geometry."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"volume file not found: {path}")
    sitk = _simpleitk()
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as err:
        raise ValueError(f"cannot read volume {path}: {err}") from None
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False), Geometry.of(image)


def atomic_output_path(path: str) -> str:
    """A temporary name beside `path` that keeps its extension (SimpleITK picks the writer
    from it); rename it onto `path` once written."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".tmp-{os.getpid()}-{name}")


def write_volume(array: np.ndarray, geometry: Geometry, path: str) -> None:
    """Write a (z, y, x) array with the given geometry, atomically (temporary file, then
    rename), so an interrupted run never leaves a truncated volume behind."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) array for {path}, got shape {array.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk = _simpleitk()
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    tmp = atomic_output_path(path)
    try:
        sitk.WriteImage(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
