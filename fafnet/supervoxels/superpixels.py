"""SSL-ALPNet's own pseudo-labels: 2D Felzenszwalb superpixels per slice (docs/protocol.md
section 16, Ouyang et al., ECCV 2020), an alternative to the 3D supervoxels of section 13.

Per slice of a pre-processed volume:
1. scikit-image's `segmentation.felzenszwalb(slice, scale=1, sigma=1, min_size=400)` on the
   slice as stored. scikit-image converts the slice with `img_as_float`, which divides an
   integer pixel type by its range (int16: 32767) and leaves floats as they are, so the
   partition depends on the stored pixel type; the slice is passed in the file's type, as the
   original (which read the files with SimpleITK) did.
2. Body mask: slice > threshold (1e-4 for SABS, 1e-4 + 50 for CHAOST2, and 1e-4, the SABS
   value, for every other dataset), its largest connected component (`skimage.measure.label`,
   8-connected), holes filled (`scipy.ndimage.binary_fill_holes`). A slice with nothing above
   the threshold keeps that empty mask, so all its labels are 0.
3. Superpixel 0 becomes max + 1 (so that 0 can mean background), everything outside the body
   mask becomes 0, and the values left are renumbered 1..n in increasing order of value.

Labels of one slice are unrelated to those of the next (label k on slices s and s + 1 are
two different superpixels); training episodes on them use one slice (fafnet/episodes/training.py,
`OneSliceSuperpixel`).

For every `image_<i>.nii.gz` of --data-dir this writes
`superpixels_<min size>/superpix-MIDDLE_<i>.nii.gz` (int32) inside the data folder with the
image's geometry, atomically, and `superpixels_<min size>/superpixel_manifest.json` with the
parameters (min_size, sigma, scale, the body threshold) and scikit-image's version. A re-run
skips the volumes already done (an output older than its image is recomputed) and refuses a
folder whose manifest records other parameters, or which holds superpixel files but no
manifest, unless --overwrite.

    fafnet-preprocess superpixels --data-dir data_processed/chaos_MR_T2_normalized --dataset CHAOST2
"""
import argparse
import contextlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import ndimage

from fafnet.datasets.specs import DATASETS
from fafnet.io.atomic import atomic_write_json
from fafnet.io.layout import (PREPROCESSING_MANIFEST_NAME, SUPERPIXEL_MANIFEST_NAME, DatasetLayout,
                              superpixel_name)
from fafnet.io.nifti import check_finite, read_volume, write_volume
from fafnet.io.progress import log_to_console
from fafnet.io.progress import progress as progress_bar
from fafnet.supervoxels.generate import is_done, list_images

MIN_SIZE = 400          # the original's felzenszwalb min_size
SIGMA = 1.0             # the original's felzenszwalb sigma
SCALE = 1.0             # scikit-image's default, which the original keeps
DEFAULT_THRESHOLD = 1e-4
# The original's body thresholds on the pre-processed image; other datasets get the default.
BODY_THRESHOLDS = {"SABS": 1e-4, "CHAOST2": 1e-4 + 50}
MANIFEST_FORMAT = 1
METHOD = ("per slice: skimage.segmentation.felzenszwalb on the slice as stored; body mask = "
          "slice > body_threshold, largest 8-connected component, holes filled; label 0 -> max + 1, "
          "outside the body -> 0, renumbered 1..n by value (docs/protocol.md section 16)")


def body_threshold(dataset: Optional[str] = None) -> float:
    """The body threshold of `dataset` (None: the default, 1e-4)."""
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is unknown; known datasets: {', '.join(DATASETS)}")
    return BODY_THRESHOLDS.get(dataset, DEFAULT_THRESHOLD)


def body_mask_2d(image_2d: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask of one (H, W) slice: image > threshold, its largest 8-connected component,
    holes filled; a slice with nothing above the threshold keeps the empty mask. Ties between
    equally large components go to the one skimage.measure.label numbers first."""
    from skimage.measure import label   # imported on first use: scikit-image takes a moment

    raw = np.asarray(image_2d) > threshold
    if not raw.any():
        return raw
    components = label(raw)             # connectivity = ndim: 8-connected in 2D
    largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    return ndimage.binary_fill_holes(components == largest)


def mask_and_renumber(segments_2d: np.ndarray, mask_2d: np.ndarray) -> np.ndarray:
    """Superpixel 0 moved to max + 1, everything outside `mask_2d` set to 0, the values left
    renumbered 1..n in increasing order. Returns int32 (H, W)."""
    labels = np.asarray(segments_2d).astype(np.int64, copy=True)
    if labels.size == 0:
        return labels.astype(np.int32)
    labels[labels == 0] = labels.max() + 1
    labels[~np.asarray(mask_2d, dtype=bool)] = 0
    values, inverse = np.unique(labels, return_inverse=True)
    renumbered = inverse.reshape(labels.shape) + (0 if values[0] == 0 else 1)
    return renumbered.astype(np.int32)


def _check_parameters(min_size, sigma, threshold) -> None:
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"the body threshold must be a finite number, got {threshold!r}")


def superpixels_for_slice(image_2d: np.ndarray, min_size: int = MIN_SIZE, sigma: float = SIGMA,
                          threshold: float = DEFAULT_THRESHOLD, scale: float = SCALE) -> np.ndarray:
    """Superpixel pseudo-labels of one (H, W) slice (steps 1 to 3 of the module docstring):
    int32, 0 outside the body, 1..n inside."""
    from skimage.segmentation import felzenszwalb

    segments = felzenszwalb(image_2d, scale=scale, sigma=sigma, min_size=int(min_size))
    return mask_and_renumber(segments, body_mask_2d(image_2d, threshold))


def superpixels_for_volume(image: np.ndarray, min_size: int = MIN_SIZE, sigma: float = SIGMA,
                           threshold: float = DEFAULT_THRESHOLD, scale: float = SCALE,
                           name: str = "the image to segment") -> np.ndarray:
    """Superpixel pseudo-labels of a [Z, H, W] image, slice by slice: int32 [Z, H, W], 0
    outside the body, 1..n_s inside slice s (each slice numbered on its own).

    The image is used in its own dtype (see the module docstring: scikit-image rescales
    integer types). `name` says what the image is in errors (a file's path)."""
    _check_parameters(min_size, sigma, threshold)
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"{name} must be a non-empty 3D [Z, H, W] array, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {image.dtype} values; expected one number per voxel")
    check_finite(image, name)
    return np.stack([superpixels_for_slice(s, min_size, sigma, threshold, scale) for s in image])


# ----------------------------------------------------------------------------- dataset folder

def scikit_image_version() -> str:
    import skimage

    return skimage.__version__


def superpixel_parameters(min_size: int, sigma: float, threshold: float) -> Dict[str, object]:
    """What determines the files: recorded in the manifest and compared on a re-run."""
    return {"min_size": int(min_size), "sigma": float(sigma), "scale": SCALE,
            "body_threshold": float(threshold), "scikit_image": scikit_image_version()}


def dataset_of(data_dir: str) -> Optional[str]:
    """The dataset key that the pre-processing manifest of `data_dir` names, if any."""
    path = os.path.join(data_dir, PREPROCESSING_MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            name = json.load(f).get("dataset")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable pre-processing manifest ({err})") from None
    return name if name in DATASETS else None


def output_folder(data_dir: str, min_size: int) -> str:
    """<data_dir>/superpixels_<min_size>/; refused when the place beside the data folder
    already holds superpixels of that size (the experiments could not tell which to read)."""
    inside, beside = DatasetLayout(data_dir, require_labels=False).superpixel_folders(min_size)
    if os.path.isdir(beside):
        raise ValueError(f"{beside} already holds superpixels of min size {min_size} for {data_dir}; "
                         f"writing {inside} too would make the experiments' choice ambiguous: "
                         f"remove or rename one of them")
    return inside


def _read_manifest(path: str) -> Optional[Dict]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        return dict(manifest)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: unreadable superpixel manifest ({err}); remove it or pass "
                         f"--overwrite") from None


def _check_rerun(folder: str, parameters: Dict[str, object], overwrite: bool) -> None:
    """Refuse to add to a folder made with other parameters, or by an unknown tool."""
    if overwrite or not os.path.isdir(folder):
        return
    path = os.path.join(folder, SUPERPIXEL_MANIFEST_NAME)
    manifest = _read_manifest(path)
    if manifest is None:
        if any(name.startswith("superpix-MIDDLE_") for name in os.listdir(folder)):
            raise ValueError(f"{folder} holds superpixel files but no {SUPERPIXEL_MANIFEST_NAME}, so "
                             f"their parameters are unknown; pass --overwrite to recompute them")
        return
    recorded = manifest.get("parameters") or {}
    differences = [f"{key} {recorded.get(key)!r} there, {value!r} now"
                   for key, value in parameters.items() if recorded.get(key) != value]
    if differences:
        raise ValueError(f"{path} records other parameters ({'; '.join(differences)}); pass "
                         f"--overwrite to recompute every volume with the new ones")


def generate_superpixels(data_dir: str, min_size: int = MIN_SIZE, sigma: float = SIGMA,
                         threshold: Optional[float] = None, dataset: Optional[str] = None,
                         overwrite: bool = False, progress: bool = True) -> List[str]:
    """Write the superpixels of every image of `data_dir` into <data_dir>/superpixels_<min_size>/
    with the manifest; returns the paths written this call (volumes already done are skipped).

    Args:
        threshold: the body threshold; None: that of `dataset` (`body_threshold`), or of the
            dataset the folder's pre-processing manifest names when `dataset` is None.
    Raises:
        FileNotFoundError, ValueError: naming the folder or file (missing, unreadable,
            truncated, not 3D, NaN or infinite voxels, a folder made with other parameters).
    """
    if dataset is None and os.path.isdir(data_dir):
        dataset = dataset_of(data_dir)
    if threshold is None:
        threshold = body_threshold(dataset)
    _check_parameters(min_size, sigma, threshold)
    images = list_images(data_dir)
    folder = output_folder(data_dir, min_size)
    parameters = superpixel_parameters(min_size, sigma, threshold)
    _check_rerun(folder, parameters, overwrite)
    from fafnet.io.provenance import code_version   # runs git: only when something is written

    atomic_write_json({
        "format": MANIFEST_FORMAT, "method": METHOD, "parameters": parameters,
        "dataset": dataset, "project": code_version(),
        "volumes": [{"image": os.path.basename(path), "superpixels": superpixel_name(number)}
                    for number, path in images]}, os.path.join(folder, SUPERPIXEL_MANIFEST_NAME))
    written = []
    with (progress_bar(images, desc=f"superpixels_{min_size}", unit="volume") if progress
          else contextlib.nullcontext(images)) as bar:
        for number, image_path in bar:
            out_path = os.path.join(folder, superpixel_name(number))
            if not overwrite and is_done(out_path, image_path):
                continue
            image, geometry = read_volume(image_path, dtype=None, require_finite=True)
            labels = superpixels_for_volume(image, min_size, sigma, threshold, name=f"volume {image_path}")
            write_volume(labels, geometry, out_path)
            written.append(out_path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fafnet-preprocess superpixels",
        description="Write SSL-ALPNet's 2D superpixel pseudo-labels (per-slice Felzenszwalb, "
                    "docs/protocol.md section 16) for every image_<i>.nii.gz of a pre-processed "
                    "dataset folder, into <data-dir>/superpixels_<min-size>/superpix-MIDDLE_<i>.nii.gz "
                    "with a superpixel_manifest.json. Train on them with pseudo_labels=superpixels.")
    parser.add_argument("--data-dir", required=True,
                        help="pre-processed folder holding image_<i>.nii.gz, e.g. "
                             "data_processed/sabs_CT_normalized")
    parser.add_argument("--min-size", type=int, default=MIN_SIZE,
                        help=f"felzenszwalb min_size in pixels (default {MIN_SIZE}, the original's); "
                             "names the folder superpixels_<min-size>")
    parser.add_argument("--sigma", type=float, default=SIGMA,
                        help=f"felzenszwalb Gaussian smoothing sigma (default {SIGMA:g})")
    parser.add_argument("--dataset", choices=list(DATASETS), default=None,
                        help="the dataset, for the body threshold (SABS 1e-4, CHAOST2 1e-4 + 50, "
                             "others 1e-4); default: the one the folder's pre-processing manifest "
                             "names, else 1e-4")
    parser.add_argument("--threshold", type=float, default=None,
                        help="body threshold on the pre-processed image (overrides --dataset's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute every volume, also those done or made with other parameters")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; bad input ends it with one line naming the file and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log_to_console()
    try:
        dataset = args.dataset if args.dataset is not None else dataset_of(args.data_dir) \
            if os.path.isdir(args.data_dir) else None
        threshold = body_threshold(dataset) if args.threshold is None else args.threshold
        written = generate_superpixels(args.data_dir, args.min_size, args.sigma, threshold, dataset,
                                       overwrite=args.overwrite)
        folder = output_folder(args.data_dir, args.min_size)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(f"wrote {len(written)} superpixel volume(s) to {folder} (min_size {args.min_size}, "
          f"sigma {args.sigma:g}, body threshold {threshold:g}"
          f"{f' for {dataset}' if dataset and args.threshold is None else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
