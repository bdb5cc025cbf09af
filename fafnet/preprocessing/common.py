"""The steps and the runner shared by the four pre-processing routes (docs/protocol.md section
12); their shared command line is fafnet/preprocessing/command_line.py.

Every step works on a `(array, Geometry)` pair: `array` in (z, y, x) order, `Geometry` in
SimpleITK's (x, y, z) order. Each geometric step (crop, pad, flip, resample) returns the
geometry that keeps the result at its true physical position, so a written volume overlays
its raw source in any viewer.

The runner `run_preprocessing` implements the CLI contract common to all datasets: sources
are indexed 0..N-1 in their sorted raw order, every source to be written is read completely
and validated before anything is written, a manifest in the output folder records which raw
files (with sizes and sha256) and which route made every output, each file is written
atomically, and finished volumes are skipped unless `overwrite` is set. A re-run whose raw
folder or route no longer matches the manifest refuses, naming the difference.
"""
import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import SimpleITK as sitk

from fafnet.io.nifti import Geometry, integer_labels, on_reference_grid, read_volume, write_volume
from fafnet.preprocessing.manifest import (RawCase, Route, build_manifest, check_manifest, read_manifest,
                                      write_manifest)
from fafnet.io.progress import progress
from fafnet.io.layout import image_name, label_name
from fafnet.io.raw import natural_sort_key, read_raw_image, strip_nifti_suffix

Source = TypeVar("Source")
log = logging.getLogger("fafnet.preprocess")

# The MRI routes' arithmetic (docs/protocol.md section 12). "release": the raw pixel type is
# kept, so on integer data (int16 DICOM and NIfTI) the clip value and every resampled value
# are truncated toward zero, as in the notebooks that made the literature's data; "float":
# float32 throughout.
MR_ARITHMETIC = ("release", "float")
DEFAULT_MR_ARITHMETIC = "release"
MR_CLIP_PERCENTILE = 99.5
MR_SIZE_YX = (256, 256)
# The spacing a DICOM series is resampled with (CHAOST2's --dicom-spacing). "float32" (the
# default): as the release's route, which writes the series to NIfTI and reads it back before
# resampling, so each spacing passes through the header's float32 (1.62 -> 1.6200000047683716);
# on integer data the other spacing truncates some resampled values one grey level apart.
# "exact": the DICOM's decimal value.
DICOM_SPACINGS = ("float32", "exact")
DEFAULT_DICOM_SPACING = "float32"


@dataclass(frozen=True)
class ProcessedVolume:
    """A pre-processed image, its label map (both (z, y, x); the label is None for a scan
    pre-processed without one, as segment.py does with its queries) and their common geometry;
    `notes` say what was done to the raw files beyond the route (a label reoriented onto its
    image's grid), and go into the manifest."""
    image: np.ndarray
    label: Optional[np.ndarray]
    geometry: Geometry
    notes: Tuple[str, ...] = ()


# ----------------------------------------------------------------------------- discovery

def require_dir(path: str, what: str) -> str:
    """Return `path` if it is a directory, otherwise raise naming `what` it should hold."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def pair_by_key(images: dict, labels: dict, image_dir: str,
                label_dir: str) -> List[Tuple[str, str]]:
    """Pair image and label paths that share a key; any unpaired file is an error.

    Args:
        images, labels: key -> path.
    Returns:
        (image path, label path) pairs in natural order of the image paths.
    """
    if not images:
        raise FileNotFoundError(f"no image files found in {image_dir}")
    unlabelled = sorted((images[k] for k in images.keys() - labels.keys()), key=natural_sort_key)
    if unlabelled:
        raise FileNotFoundError(
            f"image {unlabelled[0]} has no label file in {label_dir}"
            + (f" ({len(unlabelled) - 1} more images lack labels)" if len(unlabelled) > 1 else ""))
    orphans = sorted((labels[k] for k in labels.keys() - images.keys()), key=natural_sort_key)
    if orphans:
        raise FileNotFoundError(f"label {orphans[0]} has no image file in {image_dir}")
    keys = sorted(images, key=lambda k: natural_sort_key(images[k]))
    return [(images[k], labels[k]) for k in keys]


def find_suffix_pairs(raw_dir: str, image_suffix: str, label_suffix: str,
                      what: str) -> List[Tuple[str, str]]:
    """Pair NIfTI files anywhere under `raw_dir` named <key><image_suffix>.nii[.gz] with
    <key><label_suffix>.nii[.gz]; returns (image, label) pairs in natural order of the keys."""
    require_dir(raw_dir, f"raw {what}")
    images, labels = {}, {}
    for folder, _, names in sorted(os.walk(raw_dir)):
        for name in sorted(names):
            stem = strip_nifti_suffix(name)
            if stem is None:
                continue
            # The label suffix is tested first: it may end with the image suffix's text.
            for suffix, found in ((label_suffix, labels), (image_suffix, images)):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    key = stem[: -len(suffix)]
                    path = os.path.join(folder, name)
                    if key in found:
                        raise ValueError(f"two {what} files for {key!r}: {found[key]} and {path}")
                    found[key] = path
                    break
    if not images:
        raise FileNotFoundError(f"no {what} images named *{image_suffix}.nii[.gz] under {raw_dir}")
    return pair_by_key(images, labels, raw_dir, raw_dir)


# ----------------------------------------------------------------------------- reading and checks

def checked_label_values(label: np.ndarray, path: str, allowed: Iterable[int]) -> np.ndarray:
    """Return the label map in the smallest unsigned dtype that holds `allowed`, after
    checking that every value is one the dataset defines (raises naming `path`)."""
    allowed = sorted(set(int(v) for v in allowed))
    values = np.unique(integer_labels(label, f"label {path}"))
    unknown = sorted(set(values.tolist()) - set(allowed))
    if unknown:
        raise ValueError(f"label {path} holds value(s) {unknown} that this dataset does not define "
                         f"(allowed: {allowed})")
    return label.astype(smallest_label_dtype(max(allowed)))


def read_label(path: str, allowed: Iterable[int]) -> Tuple[np.ndarray, Geometry]:
    """Read a label volume completely, check its values against `allowed`, return it as
    uint8/uint16 with its geometry."""
    array, geometry = read_volume(path, dtype=None)
    if array.ndim != 3:
        raise ValueError(f"label {path} is not a 3D volume (array shape {array.shape})")
    return checked_label_values(array, path, allowed), geometry


def read_label_on_image_grid(path: str, allowed: Iterable[int], image_path: str, image_shape: Sequence[int],
                             image_geometry: Geometry) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """A raw label map (`read_label`) voxel for voxel on its image's grid: as stored when the
    two headers describe one grid, reoriented when the label is stored with permuted or
    flipped axes (its header saying so), else an error naming both files
    (fafnet.io.nifti.on_reference_grid). Returns the label and the notes of what was done."""
    label, geometry = read_label(path, allowed)
    label, note = on_reference_grid(label, geometry, image_geometry, tuple(image_shape), f"label {path}",
                                    image_path)
    return label, ((f"label: {note}",) if note else ())


def smallest_label_dtype(max_value: int) -> np.dtype:
    """uint8, uint16 or int32: the smallest that holds label values up to `max_value`."""
    for dtype in (np.uint8, np.uint16):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


# ----------------------------------------------------------------------------- geometry steps

def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def shift_origin(geometry: Geometry, index_offset_xyz: Sequence[float]) -> Geometry:
    """Geometry whose voxel 0 sits where voxel `index_offset_xyz` (x, y, z) of `geometry` sat."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    step = np.asarray(index_offset_xyz, dtype=np.float64) * np.asarray(geometry.spacing)
    origin = np.asarray(geometry.origin, dtype=np.float64) + direction @ step
    return Geometry(geometry.spacing, tuple(float(v) for v in origin), geometry.direction)


def extract_inplane_window(array: np.ndarray, geometry: Geometry, start_yx: Sequence[int],
                           size_yx: Sequence[int], pad_value: float) -> Tuple[np.ndarray, Geometry]:
    """Crop and/or pad every slice to the window of `size_yx` starting at `start_yx`.

    Args:
        array: (z, y, x) volume.
        start_yx: first row and column of the window, in input indices (negative or past the
            end where the window overhangs: those pixels get `pad_value`).
    Returns:
        (z, size_y, size_x) array and its geometry (origin moved to the window's first voxel).
    """
    out = np.full((array.shape[0],) + tuple(size_yx), pad_value, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for start, size, extent in zip(start_yx, size_yx, array.shape[1:]):
        lo, hi = max(start, 0), min(start + size, extent)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out[tuple(dst)] = array[tuple(src)]
    return out, shift_origin(geometry, (start_yx[1], start_yx[0], 0))


def centre_crop_or_pad(array: np.ndarray, geometry: Geometry, size_yx: Sequence[int],
                       pad_value: float) -> Tuple[np.ndarray, Geometry]:
    """Crop or pad in-plane to `size_yx` around the centre index n // 2 of each axis: input
    index n // 2 lands on output index size // 2."""
    start = [n // 2 - size // 2 for n, size in zip(array.shape[1:], size_yx)]
    return extract_inplane_window(array, geometry, start, size_yx, pad_value)


def flip_rows(array: np.ndarray, geometry: Geometry) -> Tuple[np.ndarray, Geometry]:
    """Reverse the row (y) axis of a (z, y, x) array and adjust the geometry so that every
    voxel keeps its physical position (the y direction cosines change sign)."""
    n_rows = array.shape[1]
    shifted = shift_origin(geometry, (0, n_rows - 1, 0))
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3).copy()
    direction[:, 1] *= -1.0
    flipped = Geometry(geometry.spacing, shifted.origin, tuple(float(v) for v in direction.ravel()))
    return np.ascontiguousarray(array[:, ::-1, :]), flipped


def resampled_size(size: Sequence[int], spacing: Sequence[float],
                   new_spacing: Sequence[float]) -> Tuple[int, ...]:
    """The literature's size rule int(n * old_spacing / new_spacing + 1), per axis (any order,
    as long as the three arguments share it). Evaluated in float64 in the release's order,
    n * (old / new), so that sizes match it even where rounding lands just below an integer."""
    return tuple(int(n * (float(old) / float(new)) + 1)
                 for n, old, new in zip(size, spacing, new_spacing))


def _resample_linear(image: sitk.Image, new_spacing_xyz: Sequence[float]) -> sitk.Image:
    """Linear resampling onto a grid with the same origin and direction, new spacing, and the
    size rule above; points outside the input get 0. The output keeps the input's pixel type:
    ITK interpolates in double precision and casts to it, which truncates toward zero for
    integer types (as the release's SimpleITK resampling of its int16 volumes does)."""
    size = resampled_size(image.GetSize(), image.GetSpacing(), new_spacing_xyz)
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), [float(s) for s in new_spacing_xyz],
                         image.GetDirection(), 0.0, image.GetPixelID())


def resample_image(array: np.ndarray, geometry: Geometry,
                   new_spacing_xyz: Sequence[float]) -> Tuple[np.ndarray, Geometry]:
    """Resample an intensity volume linearly to `new_spacing_xyz` (x, y, z), in the array's
    own pixel type: a float array stays float, an integer array gets each interpolated value
    truncated toward zero (11.5 -> 11, -11.5 -> -11)."""
    image = to_sitk(array, geometry)
    out = _resample_linear(image, new_spacing_xyz)
    return sitk.GetArrayFromImage(out), Geometry.of(out)


def resample_label(label: np.ndarray, geometry: Geometry,
                   new_spacing_xyz: Sequence[float]) -> Tuple[np.ndarray, Geometry]:
    """Resample a label map one class at a time: each class's binary map is interpolated
    linearly and rounded, and classes are painted in increasing value order so that a later
    class overwrites an earlier one where both round to 1. Where two classes
    touch, both interpolate to 0.5 at the seam, which rounds (half to even) to background."""
    size = resampled_size(label.shape[::-1], geometry.spacing, new_spacing_xyz)
    out = np.zeros(size[::-1], dtype=label.dtype)
    new_geometry = None
    for value in np.unique(label):
        if value == 0:
            continue
        binary = to_sitk((label == value).astype(np.float32), geometry)
        resampled = _resample_linear(binary, new_spacing_xyz)
        out[np.rint(sitk.GetArrayFromImage(resampled)) == 1] = value
        new_geometry = Geometry.of(resampled)
    if new_geometry is None:  # an empty label map: only the grid is needed
        new_geometry = Geometry(tuple(float(s) for s in new_spacing_xyz), geometry.origin,
                                geometry.direction)
    return out, new_geometry


def dicom_spacing_geometry(geometry: Geometry, dicom_spacing: str = DEFAULT_DICOM_SPACING) -> Geometry:
    """`geometry` with its spacing as the route resamples it (`DICOM_SPACINGS`): rounded
    through float32 like a NIfTI header's, or exact."""
    if check_dicom_spacing(dicom_spacing) == "exact":
        return geometry
    return dataclasses.replace(geometry, spacing=tuple(float(np.float32(s)) for s in geometry.spacing))


def check_dicom_spacing(dicom_spacing: str) -> str:
    if dicom_spacing not in DICOM_SPACINGS:
        raise ValueError(f"dicom_spacing must be one of {list(DICOM_SPACINGS)}, got {dicom_spacing!r}")
    return dicom_spacing


def check_arithmetic(arithmetic: str) -> str:
    if arithmetic not in MR_ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {list(MR_ARITHMETIC)}, got {arithmetic!r}")
    return arithmetic


def clip_top_percentile(array: np.ndarray, percentile: float = MR_CLIP_PERCENTILE) -> np.ndarray:
    """Clip intensities above the given percentile of the whole volume (MRI: removes the
    few very bright voxels of off-resonance artefacts), in the array's own pixel type.

    Voxels above the percentile p take the value p cast to the array's type: p itself for a
    float array; p truncated toward zero for an integer array, as the release's
    `array[array > p] = p` on its int16 volumes (p = 198.005 clips 199 to 198, 198 stays).
    """
    top = np.percentile(array, percentile)
    out = array.copy()
    out[array > top] = np.asarray(top).astype(array.dtype)
    return out


def mr_working_array(image: np.ndarray, arithmetic: str = DEFAULT_MR_ARITHMETIC) -> np.ndarray:
    """The image in the pixel type the MRI route computes in: the raw type ("release") or
    float32 ("float")."""
    check_arithmetic(arithmetic)
    return image if arithmetic == "release" else image.astype(np.float32)


def preprocess_mr(image: np.ndarray, label: Optional[np.ndarray], geometry: Geometry,
                  new_spacing_xyz: Sequence[float], size_yx: Sequence[int] = MR_SIZE_YX,
                  arithmetic: str = DEFAULT_MR_ARITHMETIC) -> ProcessedVolume:
    """The MRI route (CHAOS T2-SPIR, CMR, prostate): clip the top 0.5 % of intensities,
    resample to `new_spacing_xyz`, crop or pad in-plane to `size_yx` around the centre
    (images padded with their minimum, labels with 0).

    Args:
        image, label: (z, y, x) arrays on the same grid, described by `geometry`; label may
            be None (a scan without labels: the result's label is None).
        arithmetic: "release" (default) computes in the image's raw pixel type, so integer
            data is truncated as in the literature's data; "float" computes in float32.
    """
    clipped = clip_top_percentile(mr_working_array(image, arithmetic))
    image_rs, image_geometry = resample_image(clipped, geometry, new_spacing_xyz)
    image_out, out_geometry = centre_crop_or_pad(image_rs, image_geometry, size_yx,
                                                 pad_value=float(image_rs.min()))
    label_out = None
    if label is not None:
        label_rs, _ = resample_label(label, geometry, new_spacing_xyz)
        label_out, _ = centre_crop_or_pad(label_rs, image_geometry, size_yx, pad_value=0)
    return ProcessedVolume(image_out, label_out, out_geometry)


# ----------------------------------------------------------------------------- running

OUTPUT_NAME = re.compile(r"^(image|label)_(\d+)\.nii\.gz$")


def output_paths(out_dir: str, index: int) -> Tuple[str, str]:
    """(image path, label path) of volume `index` in the normalised layout."""
    return os.path.join(out_dir, image_name(index)), os.path.join(out_dir, label_name(index))


def existing_outputs(out_dir: str) -> List[str]:
    """Every image_<i>.nii.gz / label_<i>.nii.gz in `out_dir`, in natural order."""
    if not os.path.isdir(out_dir):
        return []
    names = [n for n in os.listdir(out_dir) if OUTPUT_NAME.match(n)]
    return [os.path.join(out_dir, n) for n in sorted(names, key=natural_sort_key)]


def _kept_notes(earlier: Optional[dict], pending: Sequence[int]) -> dict:
    """{index: notes} of the earlier manifest's volumes that this run keeps as they are."""
    if not earlier:
        return {}
    return {i: list(v["notes"]) for i, v in enumerate(earlier.get("volumes", []))
            if i not in pending and v.get("notes")}


def write_processed(volume: ProcessedVolume, out_dir: str, index: int) -> Tuple[str, str]:
    """Write image and label atomically; the image last, so a volume whose image exists is
    complete (the label was written before it)."""
    image_path, label_path = output_paths(out_dir, index)
    write_volume(volume.label, volume.geometry, label_path)
    write_volume(volume.image.astype(np.float32, copy=False), volume.geometry, image_path)
    return image_path, label_path


def run_preprocessing(sources: Sequence[Source], out_dir: str,
                      validate: Callable[[Source], None],
                      process: Callable[[Source], ProcessedVolume],
                      overwrite: bool = False, name: str = "volumes", *,
                      raw_dir: str, route: Route,
                      describe: Callable[[Source], RawCase]) -> List[str]:
    """Validate, then process and write, every source whose outputs are missing.

    Source i (in the given order) becomes image_i / label_i. The manifest of this run (raw
    files of every source by `describe`, with size and sha256, and `route`) must match the
    one in `out_dir` whenever outputs exist there, otherwise nothing is done (ValueError
    naming the differences) unless `overwrite`, which removes every existing output and
    redoes all volumes. All sources to be written are validated first, so bad input fails
    before any file is written or removed.

    Args:
        name: the dataset's name, for the manifest and progress bars.
        raw_dir: the raw folder; manifest paths are relative to it.
        route: the pre-processing route and its parameters, recorded in the manifest.
        describe: source -> its raw case name and raw files.
    Returns:
        the image and label paths of every volume (written now or found complete).
    """
    manifest = build_manifest(name, route, raw_dir, [describe(source) for source in sources],
                              [[os.path.basename(p) for p in output_paths(out_dir, i)]
                               for i in range(len(sources))])
    found = existing_outputs(out_dir)
    if not overwrite:
        check_manifest(out_dir, manifest, found)
    pending = [i for i in range(len(sources))
               if overwrite or not all(map(os.path.isfile, output_paths(out_dir, i)))]
    # A bar on a terminal, log lines in a batch job (fafnet/io/progress.py); closed on errors so
    # the error's line starts on a line of its own.
    with progress(pending, desc=f"checking {name}", unit="volume") as bar:
        for i in bar:
            validate(sources[i])
    os.makedirs(out_dir, exist_ok=True)
    if overwrite:  # no output of an earlier run may survive next to the new manifest
        for path in found:
            os.remove(path)
    earlier = None if overwrite else read_manifest(out_dir)
    write_manifest(out_dir, manifest)
    notes = _kept_notes(earlier, pending)
    with progress(pending, desc=f"pre-processing {name}", unit="volume") as bar:
        for i in bar:
            volume = process(sources[i])
            write_processed(volume, out_dir, i)
            if volume.notes:
                notes[i] = list(volume.notes)
                log.warning("image_%d from %s: %s", i, describe(sources[i]).case, "; ".join(volume.notes))
    if notes:
        for i, volume_notes in notes.items():
            manifest["volumes"][i]["notes"] = volume_notes
        write_manifest(out_dir, manifest)
    return [path for i in range(len(sources)) for path in output_paths(out_dir, i)]


def nifti_pair_case(pair: Tuple[str, str]) -> RawCase:
    """The raw case of an (image, label) NIfTI pair: the image's file name without suffix."""
    image_path, label_path = pair
    case = strip_nifti_suffix(os.path.basename(image_path)) or os.path.basename(image_path)
    return RawCase(case, {"image": [image_path], "label": [label_path]})


def mr_route(dataset: str, new_spacing_xyz: Sequence[float], label_values: Iterable[int],
             arithmetic: str = DEFAULT_MR_ARITHMETIC, **extra) -> Route:
    """The manifest's description of the MRI route (`preprocess_mr`) for one dataset;
    `extra` adds dataset-specific parameters."""
    check_arithmetic(arithmetic)
    parameters = {"dataset": dataset, "arithmetic": arithmetic,
                  "pixel_type": ("raw (integer types truncate the clip value and resampled values "
                                 "toward zero)" if arithmetic == "release" else "float32"),
                  "target_spacing_xyz": [float(s) for s in new_spacing_xyz],
                  "clip_percentile": MR_CLIP_PERCENTILE, "size_yx": list(MR_SIZE_YX),
                  "label_values": sorted(int(v) for v in label_values)}
    parameters.update(extra)
    return Route("mri_clip_resample_crop", parameters)


def validate_nifti_pair(pair: Tuple[str, str], allowed_labels: Iterable[int]) -> None:
    """Raise if an (image, label) NIfTI pair is unreadable (truncated or damaged included),
    has non-finite image voxels, mismatched shapes or unknown label values."""
    image_path, label_path = pair
    image, geometry = read_raw_image(image_path)
    read_label_on_image_grid(label_path, allowed_labels, image_path, image.shape, geometry)


def preprocess_nifti_mr_pair(pair: Tuple[str, str], allowed_labels: Iterable[int],
                             new_spacing_xyz: Sequence[float],
                             arithmetic: str = DEFAULT_MR_ARITHMETIC) -> ProcessedVolume:
    """Read an (image, label) NIfTI pair and run the MRI route (`preprocess_mr`) in its raw
    pixel type or float32 (`arithmetic`). The label is brought onto the image's grid
    (`read_label_on_image_grid`)."""
    image_path, label_path = pair
    array, geometry = read_raw_image(image_path)
    label, notes = read_label_on_image_grid(label_path, allowed_labels, image_path, array.shape, geometry)
    volume = preprocess_mr(array, label, geometry, new_spacing_xyz, arithmetic=arithmetic)
    return dataclasses.replace(volume, notes=notes)


