"""Supervoxel pseudo-labels for a pre-processed dataset folder (docs/protocol.md section 13).

For every `image_<i>.nii.gz` in --data-dir this writes
`supervoxels_<min size>/superpix-MIDDLE_<i>.nii.gz` with the image's geometry: 3D Felzenszwalb
supervoxels of the [0, 255]-rescaled volume, restricted to the body (step 6). Volumes already
done are skipped unless --overwrite (an output older than its image, for example after the
image was pre-processed again, is not done: it is recomputed); every file is written
atomically. An image that cannot be read completely or holds NaN or infinite voxels is an
error naming it; the CLI then ends with that one line and exit status 2.

    python -m fafnet.supervoxels.generate \
        --data-dir data_processed/sabs_CT_normalized --min-size 5000

The experiments read <data_root>/<folder>/supervoxels_<min size>/, data_root defaulting to
./data_processed, so run this on the folder the pre-processing CLI wrote.
"""
import argparse
import contextlib
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from fafnet.io.layout import DatasetLayout, supervoxel_name
from fafnet.io.nifti import Geometry, check_finite, read_volume, write_volume
from fafnet.io.progress import log_to_console
from fafnet.io.progress import progress as progress_bar
from fafnet.supervoxels.felzenszwalb_3d import felzenszwalb_3d

FOREGROUND_THRESHOLD = 10.0  # on the [0, 255] image


def rescale_to_255(image: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 255] as float64 (a constant volume becomes all zeros). NaN or
    infinite voxels would make every voxel NaN (and the body mask empty): they are refused."""
    image = np.asarray(image, dtype=np.float64)
    check_finite(image, "the image to segment")
    low, high = image.min(), image.max()
    if high == low:
        return np.zeros_like(image)
    return 255.0 * (image - low) / (high - low)


def foreground_mask_2d(slice_255: np.ndarray,
                       threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Body mask of one (H, W) slice: intensity > threshold, its largest 8-connected component,
    holes filled. A slice with nothing above the threshold keeps the (empty) raw mask."""
    raw = slice_255 > threshold
    if not raw.any():
        return raw
    components, _ = ndimage.label(raw, structure=np.ones((3, 3), dtype=bool))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)


def foreground_mask(volume_255: np.ndarray, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """(D, H, W) bool body mask, built slice by slice (step 6 of the supervoxel recipe)."""
    return np.stack([foreground_mask_2d(s, threshold) for s in volume_255])


def mask_supervoxels(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Move supervoxel 0 to max + 1 (so 0 can mean background), then zero everything
    outside the mask. Returns int32."""
    labels = labels.astype(np.int32, copy=True)
    labels[labels == 0] = labels.max() + 1
    labels[~mask] = 0
    return labels


def supervoxels_for_volume(image: np.ndarray, spacing: Sequence[float], min_size: int,
                           scale: float = 1.0, sigma: float = 0.0) -> np.ndarray:
    """Supervoxel pseudo-label volume of one (D, H, W) image (docs/protocol.md section 13,
    steps 1 to 6).

    spacing is per array axis as felzenszwalb_3d takes it. Returns (D, H, W) int32: 0 outside
    the body, supervoxel ids >= 1 inside (not necessarily consecutive after masking).
    """
    volume_255 = rescale_to_255(image)
    labels = felzenszwalb_3d(volume_255, scale=scale, sigma=sigma, min_size=min_size,
                             spacing=spacing)
    return mask_supervoxels(labels, foreground_mask(volume_255))


def header_spacing_release_order(geometry: Geometry) -> Tuple[float, float, float]:
    """Spacing in the release's (z, x, y) order (docs/protocol.md section 13, step 1). After
    pre-processing the in-plane spacing is isotropic, so this equals the array's (z, y, x)
    spacing there."""
    x, y, z = geometry.spacing[:3]
    return (z, x, y)


def list_images(data_dir: str) -> List[Tuple[int, str]]:
    """(i, path) of every image_<i>.nii[.gz] in data_dir, sorted by i (fafnet/io/layout.py: any
    integers i, a volume file named otherwise is an error)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory")
    return [(volume.number, volume.image) for volume in DatasetLayout(data_dir, require_labels=False).volumes]


def output_folder(data_dir: str, min_size: int, out_dir: Optional[str] = None) -> str:
    """Where the supervoxels go: `out_dir` if given, else <data_dir>/supervoxels_<min_size>/.
    The latter is refused when the release's place beside the data folder already holds
    supervoxels of that size: the experiments could not tell which of the two to read."""
    if out_dir is not None:
        return out_dir
    inside, beside = DatasetLayout(data_dir, require_labels=False).supervoxel_folders(min_size)
    if os.path.isdir(beside):
        raise ValueError(f"{beside} already holds supervoxels of min size {min_size} for {data_dir} "
                         f"(the release's place); writing {inside} too would make the experiments' "
                         f"choice ambiguous: pass --out-dir to write elsewhere")
    return inside


def is_done(out_path: str, image_path: str) -> bool:
    """Whether a supervoxel file exists and is not older than its image (an older one was
    computed from an earlier version of the image)."""
    return (os.path.isfile(out_path)
            and os.stat(out_path).st_mtime_ns >= os.stat(image_path).st_mtime_ns)


def generate_supervoxels(data_dir: str, min_size: int, overwrite: bool = False,
                         scale: float = 1.0, sigma: float = 0.0, progress: bool = True,
                         out_dir: Optional[str] = None) -> List[str]:
    """Write supervoxels for every image in data_dir into `output_folder`; returns the paths
    written this call (volumes skipped because their output is done, see `is_done`, are not
    listed).

    Raises:
        FileNotFoundError, ValueError: naming the folder or image (missing, unreadable,
            truncated, or with NaN or infinite voxels).
    """
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    images = list_images(data_dir)
    folder = output_folder(data_dir, min_size, out_dir)
    written = []
    # A bar on a terminal, log lines in a batch job's log (fafnet/io/progress.py); closed on errors
    # so the error starts its own line.
    with (progress_bar(images, desc=f"supervoxels_{min_size}", unit="volume") if progress
          else contextlib.nullcontext(images)) as bar:
        for number, image_path in bar:
            out_path = os.path.join(folder, supervoxel_name(number))
            if not overwrite and is_done(out_path, image_path):
                continue
            image, geometry = read_volume(image_path, dtype=np.float64, require_finite=True)
            labels = supervoxels_for_volume(image, header_spacing_release_order(geometry),
                                            min_size, scale=scale, sigma=sigma)
            write_volume(labels, geometry, out_path)
            written.append(out_path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fafnet.supervoxels.generate",
        description="Write 3D Felzenszwalb supervoxels (docs/protocol.md section 13) for every "
                    "image_<i>.nii.gz of a pre-processed dataset folder.")
    parser.add_argument("--data-dir", required=True,
                        help="pre-processed folder holding image_<i>.nii.gz, e.g. "
                             "data_processed/sabs_CT_normalized (the experiments read "
                             "<data_root>/<folder>, data_root defaulting to ./data_processed); "
                             "output goes to <data-dir>/supervoxels_<min-size>/"
                             "superpix-MIDDLE_<i>.nii.gz")
    parser.add_argument("--min-size", required=True, type=int,
                        help="minimum supervoxel size in voxels (5000 abdominal, 1000 CMR)")
    parser.add_argument("--out-dir", default=None,
                        help="write the supervoxel files here instead of <data-dir>/supervoxels_<min-size>/ "
                             "(e.g. to compare with supervoxels made elsewhere)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute volumes whose output already exists")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Felzenszwalb scale; k = scale / 255 (default 1)")
    parser.add_argument("--sigma", type=float, default=0.0,
                        help="Gaussian smoothing sigma before segmentation "
                             "(default 0, as released)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; bad input (or an unreadable or unwritable file) ends it with one line
    naming the file and exit status 2, without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log_to_console()
    try:
        folder = output_folder(args.data_dir, args.min_size, args.out_dir)
        written = generate_supervoxels(args.data_dir, args.min_size, overwrite=args.overwrite,
                                       scale=args.scale, sigma=args.sigma, out_dir=args.out_dir)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(f"wrote {len(written)} supervoxel volume(s) to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
