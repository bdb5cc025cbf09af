"""Compare the project's 3D supervoxels with supervoxel files made elsewhere (the FSMIS
community's `supervoxels_<min size>/superpix-MIDDLE_<i>.nii.gz`) for the same images.

For every volume it runs the project's generator (fafnet.supervoxels.generate:
`supervoxels_for_volume` on the image read with fafnet.io.nifti.read_volume, spacing from the
header in the release's order, as `generate_supervoxels` does) and compares the result with
the shipped file:

* segments: the number of non-zero labels in each;
* body mask: whether label > 0 covers the same voxels (voxel counts and the difference);
* identity up to renumbering: every label of ours (0 included) meets exactly one shipped
  label in the contingency table and vice versa;
* partition similarity: the adjusted Rand index over all voxels (0 = background is one
  class) and the fraction of body voxels (label > 0 in either) lying in segments that are
  the same voxel set in both.

The shipped files carry no geometry (unit spacing, zero origin), so their array orientation
relative to the image is found by agreement: of the 16 flips / in-plane transposes of the
shipped array, the one whose body mask best matches ours is reported (and used).

    .venv/bin/python bench/compare_supervoxels.py \
        --image-dir ../shared/real/CMR/cmr_MR_normalized \
        --supervoxel-dir ../shared/real/CMR/supervoxels_1000 --json cmp.json

Variants of the generator for finding the cause of a difference are non-default options
(see --help); without them the project's generator runs exactly as the pipeline runs it.
"""
import argparse
import itertools
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Run by path (python bench/compare_supervoxels.py), the repository root is not on sys.path:
# put it first so this checkout's packages are imported, not another installed copy.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path[:1]:
    sys.path.insert(0, _ROOT)

from fafnet.io.atomic import atomic_write_json  # noqa: E402
from fafnet.io.nifti import read_volume  # noqa: E402
from fafnet.supervoxels.felzenszwalb_3d import felzenszwalb_3d  # noqa: E402
from fafnet.supervoxels.generate import (FOREGROUND_THRESHOLD,  # noqa: E402
                                                   foreground_mask,
                                                   header_spacing_release_order,
                                                   mask_supervoxels, rescale_to_255,
                                                   supervoxels_for_volume)

IMAGE_PATTERN = re.compile(r"^image_(\d+)\.nii\.gz$")


# ----------------------------------------------------------------------------- comparison

def contingency(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency table of two label arrays of one shape:
    (label in a, label in b, voxel count), one entry per pair of labels that share voxels."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in size: {a.size} and {b.size}")
    if a.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    pairs, counts = np.unique(ia.ravel().astype(np.int64) * len(ub) + ib.ravel(),
                              return_counts=True)
    return ua[pairs // len(ub)], ub[pairs % len(ub)], counts.astype(np.int64)


def _comb2(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.float64)
    return n * (n - 1) / 2


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie) of two labellings of the same voxels: 1 for
    partitions equal up to renumbering, about 0 for independent ones. Two trivial partitions
    (each a single class, or each all singletons) count as equal: 1."""
    la, lb, counts = contingency(a, b)
    n = counts.sum()
    if n < 2:
        return 1.0
    sum_cells = _comb2(counts).sum()
    sum_a = _comb2(np.bincount(np.unique(la, return_inverse=True)[1], weights=counts)).sum()
    sum_b = _comb2(np.bincount(np.unique(lb, return_inverse=True)[1], weights=counts)).sum()
    expected = sum_a * sum_b / _comb2(n)
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def partition_agreement(a: np.ndarray, b: np.ndarray) -> Dict[str, object]:
    """How far two label arrays (0 = background) are the same partition.

    Returns a dict: identical (equal up to a one-to-one renumbering, 0 included), segments_a
    and segments_b (non-zero labels), matched_segments (non-zero segments that are the same
    voxel set in both), matched_voxel_fraction (of the voxels non-zero in either, the share
    in matched segments), ari (adjusted Rand index over all voxels).
    """
    la, lb, counts = contingency(a, b)
    # A cell is one-to-one when its label in a meets no other label of b and vice versa.
    per_a = np.unique(la, return_counts=True)
    per_b = np.unique(lb, return_counts=True)
    cells_of_a = per_a[1][np.searchsorted(per_a[0], la)]
    cells_of_b = per_b[1][np.searchsorted(per_b[0], lb)]
    one_to_one = (cells_of_a == 1) & (cells_of_b == 1)
    foreground = (la != 0) | (lb != 0)
    matched = one_to_one & (la != 0) & (lb != 0)
    total_fg = int(counts[foreground].sum())
    return {
        "identical": bool(one_to_one.all()) and bool(np.all((la == 0) == (lb == 0))),
        "segments_a": int(np.count_nonzero(per_a[0] != 0)),
        "segments_b": int(np.count_nonzero(per_b[0] != 0)),
        "matched_segments": int(np.count_nonzero(matched)),
        "matched_voxel_fraction": float(counts[matched].sum() / total_fg) if total_fg else 1.0,
        "ari": adjusted_rand_index(a, b),
    }


def mask_agreement(a: np.ndarray, b: np.ndarray) -> Dict[str, object]:
    """Whether the body masks (label > 0) of two label arrays cover the same voxels."""
    ma, mb = np.asarray(a) > 0, np.asarray(b) > 0
    return {"same": bool(np.array_equal(ma, mb)), "voxels_a": int(ma.sum()),
            "voxels_b": int(mb.sum()), "only_a": int((ma & ~mb).sum()),
            "only_b": int((mb & ~ma).sum())}


# ----------------------------------------------------------------------------- orientation

def orientation_candidates(shape: Sequence[int]) -> List[Tuple[str, Callable]]:
    """(name, function) for each flip of the three axes, with and without swapping the two
    in-plane axes (only where the in-plane shape is square); "identity" first."""
    candidates = []
    transposes = (False, True) if shape[1] == shape[2] else (False,)
    for transpose, flips in itertools.product(transposes,
                                              itertools.product((False, True), repeat=3)):
        parts = (["transpose(y,x)"] if transpose else []) + \
                [f"flip({axis})" for axis, f in zip("zyx", flips) if f]
        name = "+".join(parts) or "identity"

        def apply(array, transpose=transpose, flips=flips):
            out = np.swapaxes(array, 1, 2) if transpose else array
            axes = tuple(i for i, f in enumerate(flips) if f)
            return np.flip(out, axes) if axes else out
        candidates.append((name, apply))
    return candidates


def find_orientation(reference_mask: np.ndarray, shipped: np.ndarray) -> Dict[str, object]:
    """The transform of `shipped` whose mask (label > 0) best matches `reference_mask` by
    Dice, with the Dice of every candidate. Shapes must agree (after the transform)."""
    scores = {}
    for name, apply in orientation_candidates(shipped.shape):
        mask = apply(shipped) > 0
        if mask.shape != reference_mask.shape:
            continue
        total = mask.sum() + reference_mask.sum()
        scores[name] = float(2 * (mask & reference_mask).sum() / total) if total else 1.0
    if not scores:
        raise ValueError(f"no orientation of the shipped array {shipped.shape} matches the "
                         f"image's shape {reference_mask.shape}")
    best = max(scores, key=lambda k: (scores[k], k == "identity"))
    return {"best": best, "dice": scores}


def apply_orientation(array: np.ndarray, name: str) -> np.ndarray:
    for candidate, apply in orientation_candidates(array.shape):
        if candidate == name:
            return np.ascontiguousarray(apply(array))
    raise ValueError(f"unknown orientation {name!r}")


# ----------------------------------------------------------------------------- generation

def spacing_for(image_path: str, geometry, order: str, source: str) -> Tuple[float, float, float]:
    """Spacing handed to the generator.

    order: "zxy" (the project's and the release's order), "zyx" (array order) or "unit".
    source: "affine" (the project's Geometry: column lengths of the voxel-to-world
    transform, what generate_supervoxels uses), "pixdim" (the header's float32 pixdim as
    double, what SimpleITK's GetSpacing returns) or "pixdim-text" (the pixdim[1..3] strings
    of SimpleITK's metadata dictionary parsed with float(), as the release's script does;
    ITK prints them with 6 significant digits, so 7.99f becomes exactly 7.99).
    """
    if order == "unit":
        return (1.0, 1.0, 1.0)
    if source == "affine":
        if order == "zxy":
            return header_spacing_release_order(geometry)
        x, y, z = geometry.spacing[:3]
    elif source == "pixdim":
        import nibabel as nib
        x, y, z = (float(v) for v in nib.load(image_path).header.get_zooms()[:3])
    elif source == "pixdim-text":
        import SimpleITK as sitk
        reader = sitk.ImageFileReader()
        reader.SetFileName(image_path)
        reader.ReadImageInformation()
        x, y, z = (float(reader.GetMetaData(f"pixdim[{i}]")) for i in (1, 2, 3))
    else:
        raise ValueError(f"unknown spacing source {source!r}")
    return (z, x, y) if order == "zxy" else (z, y, x)


# The release's 13 edge directions in the order it stacks them (before its argsort), as
# (slice, row, column) steps from a voxel to its neighbour, and which weight factor each
# takes: 1 in-plane, 2 along the slice axis, 3 slice + one in-plane axis, 4 slice + both.
RELEASE_DIRECTIONS = (
    ((0, 1, 0), 1), ((0, 1, 1), 1), ((0, 0, 1), 1), ((0, 1, -1), 1),
    ((1, 1, 0), 3), ((1, 1, 1), 4), ((1, 0, 1), 3), ((1, -1, 0), 3), ((1, -1, -1), 4),
    ((1, 0, -1), 3), ((1, 1, -1), 4), ((1, -1, 1), 4), ((1, 0, 0), 2),
)


def _axis_pair(step: int, length: int) -> Tuple[slice, slice]:
    """(voxel slice, neighbour slice) along one axis for a step of -1, 0 or 1."""
    if step >= 0:
        return slice(0, length - step), slice(step, length)
    return slice(-step, length), slice(0, length + step)


def release_order_edges(volume: np.ndarray, spacing: Sequence[float]
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """All edges of the 26-neighbourhood graph as the release lists them: direction by
    direction in RELEASE_DIRECTIONS order, each in raster order of its voxels. Weights are
    sqrt(w * d^2) with the release's factors (1, s^2, (sqrt(1 + s^2) / sqrt(2))^2,
    (sqrt(2 + s^2) / sqrt(3))^2; s = spacing[0] / spacing[1]), evaluated as it evaluates them.
    Returns (E, 2) int64 voxel pairs and (E,) float64 weights, unsorted."""
    spacing = np.asarray(spacing, dtype=np.float64)
    s = spacing[0] / spacing[1]
    factor = {1: 1.0, 2: s ** 2, 3: (np.sqrt(1 + s ** 2) / np.sqrt(2)) ** 2,
              4: (np.sqrt(2 + s ** 2) / np.sqrt(3)) ** 2}
    index = np.arange(volume.size, dtype=np.int64).reshape(volume.shape)
    pairs, weights = [], []
    for step, kind in RELEASE_DIRECTIONS:
        here, there = zip(*(_axis_pair(d, n) for d, n in zip(step, volume.shape)))
        diff = volume[there] - volume[here]
        weights.append(np.sqrt(factor[kind] * diff ** 2).ravel())
        pairs.append(np.stack([index[there].ravel(), index[here].ravel()], axis=1))
    return np.concatenate(pairs), np.concatenate(weights)


def release_edge_order(weights: np.ndarray, sort: str) -> np.ndarray:
    """The permutation that sorts `weights` the way the release's np.argsort(costs) did.

    "classic": numpy's introsort ("quicksort" kind) as numpy ran it for float64 before its
    SIMD sorts (numpy < 1.25, or a CPU without them). Newer numpy sends float64 quicksort
    argsorts to x86-simd-sort where the CPU has AVX-512 or AVX2, which orders equal weights
    differently; long double still takes the classic code path, and every float64 is exact
    in long double, so this is the classic permutation on any numpy.
    "numpy": np.argsort(weights) with the installed numpy on this CPU.
    "stable": equal weights in list order.
    """
    if sort == "classic":
        return np.argsort(weights.astype(np.longdouble), kind="quicksort")
    if sort == "numpy":
        return np.argsort(weights)
    if sort == "stable":
        return np.argsort(weights, kind="stable")
    raise ValueError(f"unknown sort {sort!r}")


def release_emulation_felzenszwalb(volume_255: np.ndarray, spacing: Sequence[float],
                                   min_size: int, sort: str = "classic",
                                   scale: float = 1.0) -> np.ndarray:
    """3D Felzenszwalb with the release's edge list and edge order (steps 2 to 5 of
    docs/protocol.md section 13, sigma 0): release_order_edges, sorted by
    release_edge_order, merged by the package's compiled `segment_edge_list` (the release's
    two merging loops over an explicit sorted edge list, float64 thresholds; the release keeps
    the threshold in a C float, which made no difference on the CMR files). About 1 GB for a
    19 x 256 x 256 volume. Returns (D, H, W) int64 labels 0..n-1 by first occurrence."""
    from fafnet.supervoxels._felzenszwalb_3d import segment_edge_list
    volume = np.ascontiguousarray(volume_255, dtype=np.float64)
    pairs, weights = release_order_edges(volume, spacing)
    order = release_edge_order(weights, sort)
    pairs = np.ascontiguousarray(pairs[order])
    weights = np.ascontiguousarray(weights[order])
    del order
    forest = segment_edge_list(pairs, weights, volume.size, float(scale) / 255.0, int(min_size))
    del pairs, weights
    previous = None
    while previous is None or not np.array_equal(previous, forest):
        previous, forest = forest, forest[forest]
    # Roots are each component's smallest voxel index, so sorted roots = first occurrence.
    return np.unique(forest, return_inverse=True)[1].reshape(volume.shape)


def our_supervoxels(image_path: str, min_size: int, variant: argparse.Namespace
                        ) -> np.ndarray:
    """Supervoxels of one image by the project's generator; with the default variant exactly
    what generate_supervoxels writes (supervoxels_for_volume with the header spacing)."""
    image, geometry = read_volume(image_path, dtype=np.float64, require_finite=True)
    spacing = spacing_for(image_path, geometry, variant.spacing_order, variant.spacing_source)
    if variant.image_dtype == "float32":
        image = image.astype(np.float32).astype(np.float64)
    if variant.generator == "project" and variant.fg_threshold == FOREGROUND_THRESHOLD:
        return supervoxels_for_volume(image, spacing, min_size, sigma=variant.sigma)
    volume_255 = rescale_to_255(image)
    if variant.generator == "project":
        labels = felzenszwalb_3d(volume_255, scale=1.0, sigma=variant.sigma,
                                 min_size=min_size, spacing=spacing)
    else:
        if variant.sigma != 0:
            raise ValueError("--generator release-emulation runs with sigma 0 only")
        labels = release_emulation_felzenszwalb(volume_255, spacing, min_size, variant.sort)
    return mask_supervoxels(labels, foreground_mask(volume_255, variant.fg_threshold))


# ----------------------------------------------------------------------------- driver

def list_volumes(image_dir: str, supervoxel_dir: str, subset: Optional[Sequence[int]]):
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"--image-dir {image_dir!r} is not a directory")
    if not os.path.isdir(supervoxel_dir):
        raise FileNotFoundError(f"--supervoxel-dir {supervoxel_dir!r} is not a directory")
    found = sorted(int(m.group(1)) for name in os.listdir(image_dir)
                   if (m := IMAGE_PATTERN.match(name)))
    if subset:
        missing = sorted(set(subset) - set(found))
        if missing:
            raise FileNotFoundError(f"no image_<i>.nii.gz for volume(s) {missing} in {image_dir}")
        found = [i for i in found if i in set(subset)]
    volumes = []
    for index in found:
        shipped = os.path.join(supervoxel_dir, f"superpix-MIDDLE_{index}.nii.gz")
        if not os.path.isfile(shipped):
            raise FileNotFoundError(f"no shipped supervoxels for volume {index}: {shipped}")
        volumes.append((index, os.path.join(image_dir, f"image_{index}.nii.gz"), shipped))
    if not volumes:
        raise FileNotFoundError(f"no image_<i>.nii.gz files in {image_dir}")
    return volumes


def compare_volume(index: int, image_path: str, shipped_path: str, min_size: int,
                   variant: argparse.Namespace) -> Dict[str, object]:
    start = time.perf_counter()
    ours = our_supervoxels(image_path, min_size, variant)
    seconds = time.perf_counter() - start
    shipped, _ = read_volume(shipped_path, dtype=None)
    orientation = find_orientation(ours > 0, shipped)
    shipped = apply_orientation(shipped, orientation["best"])
    return {"volume": index, "shape": list(ours.shape), "seconds": round(seconds, 2),
            "orientation": orientation["best"],
            "orientation_dice_identity": orientation["dice"].get("identity"),
            "orientation_dice_next_best": max([v for k, v in orientation["dice"].items()
                                               if k != orientation["best"]], default=None),
            "mask": mask_agreement(ours, shipped), **partition_agreement(ours, shipped)}


def summarise(rows: List[Dict[str, object]]) -> Dict[str, object]:
    def median(key):
        return float(np.median([r[key] for r in rows]))
    return {"volumes": len(rows),
            "identical": sum(r["identical"] for r in rows),
            "same_segment_count": sum(r["segments_a"] == r["segments_b"] for r in rows),
            "same_mask": sum(r["mask"]["same"] for r in rows),
            "median_segments_ours": median("segments_a"),
            "median_segments_shipped": median("segments_b"),
            "median_ari": median("ari"),
            "median_matched_voxel_fraction": median("matched_voxel_fraction"),
            "orientations": sorted({r["orientation"] for r in rows})}


def format_row(r: Dict[str, object]) -> str:
    m = r["mask"]
    mask = "same" if m["same"] else f"+{m['only_a']}/-{m['only_b']}"
    return (f"{r['volume']:>4} {'x'.join(map(str, r['shape'])):>11} {r['segments_a']:>5} "
            f"{r['segments_b']:>5} {mask:>11} {'yes' if r['identical'] else 'no':>5} "
            f"{r['ari']:>7.4f} {r['matched_segments']:>5} {r['matched_voxel_fraction']:>7.4f} "
            f"{r['orientation']:>9} {r['seconds']:>6.1f}")


VARIANT_OPTIONS = ("generator", "sort", "spacing_order", "spacing_source", "image_dtype",
                   "sigma", "fg_threshold")

HEADER = (f"{'vol':>4} {'shape':>11} {'ours':>5} {'ship':>5} {'mask':>11} {'ident':>5} "
          f"{'ARI':>7} {'match':>5} {'matchvx':>7} {'orient':>9} {'sec':>6}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/compare_supervoxels.py",
        description="Compare the project's 3D supervoxels with shipped superpix-MIDDLE_<i> "
                    "files for the same images: segment counts, body masks, identity up to "
                    "renumbering, adjusted Rand index and the share of voxels in segments "
                    "that match one to one. Columns: ours/ship = non-zero segments; mask = "
                    "'same' or +voxels only ours/-voxels only shipped; match = one-to-one "
                    "segments; matchvx = share of body voxels in them.")
    parser.add_argument("--image-dir", required=True,
                        help="folder with image_<i>.nii.gz (e.g. .../CMR/cmr_MR_normalized)")
    parser.add_argument("--supervoxel-dir", required=True,
                        help="folder with the shipped superpix-MIDDLE_<i>.nii.gz")
    parser.add_argument("--min-size", type=int, default=1000,
                        help="minimum supervoxel size the shipped files were made with "
                             "(default 1000)")
    parser.add_argument("--json", metavar="OUT", help="also write rows and summary to OUT")
    parser.add_argument("--volumes", type=int, nargs="+", metavar="I",
                        help="only these volume numbers (default: all)")
    variants = parser.add_argument_group(
        "generator variants (non-default; for finding the cause of a difference)")
    variants.add_argument("--generator", choices=("project", "release-emulation"),
                          default="project",
                          help="project: the package's felzenszwalb_3d (default); "
                               "release-emulation: the release's edge list, weight factors "
                               "and np.argsort edge order (see --sort), merged by the "
                               "package's segment_edge_list; about 4 s and 1 GB a volume")
    variants.add_argument("--sort", choices=("classic", "numpy", "stable"), default="classic",
                          help="release-emulation only: how equal edge weights are ordered: "
                               "numpy's classic introsort argsort, as numpy < 1.25 ran it "
                               "(default), the installed numpy's np.argsort on this CPU "
                               "(SIMD sorts on AVX-512/AVX2), or stable")
    variants.add_argument("--spacing-order", choices=("zxy", "zyx", "unit"), default="zxy",
                          help="spacing handed to the generator: the release's (z, x, y) "
                               "(default), array order (z, y, x), or unit spacing")
    variants.add_argument("--spacing-source", choices=("affine", "pixdim", "pixdim-text"),
                          default="affine",
                          help="affine: the project's Geometry, column lengths of the "
                               "voxel-to-world transform (default, as generate_supervoxels); "
                               "pixdim: the header's float32 pixdim (SimpleITK's GetSpacing); "
                               "pixdim-text: SimpleITK's pixdim[i] metadata strings through "
                               "float(), as the release's script reads them (7.99 exactly)")
    variants.add_argument("--image-dtype", choices=("float64", "float32"), default="float64",
                          help="round the image through float32 before segmenting")
    variants.add_argument("--sigma", type=float, default=0.0,
                          help="Gaussian smoothing sigma (default 0, as released; project "
                               "generator only)")
    variants.add_argument("--fg-threshold", type=float, default=FOREGROUND_THRESHOLD,
                          help=f"body-mask threshold on the [0, 255] image (default "
                               f"{FOREGROUND_THRESHOLD:g})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        volumes = list_volumes(args.image_dir, args.supervoxel_dir, args.volumes)
    except (OSError, ValueError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    variant = {k: getattr(args, k) for k in VARIANT_OPTIONS}
    defaults = {k: parser.get_default(k) for k in VARIANT_OPTIONS}
    changed = {k: v for k, v in variant.items() if v != defaults[k]}
    print("generator: the project's, as generate_supervoxels runs it" if not changed else
          "generator variant: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    rows = []
    print(HEADER, flush=True)
    for index, image_path, shipped_path in volumes:
        try:
            row = compare_volume(index, image_path, shipped_path, args.min_size, args)
        except (OSError, ValueError) as err:
            parser.exit(1, f"{parser.prog}: error: volume {index}: {err}\n")
        rows.append(row)
        print(format_row(row), flush=True)
    summary = summarise(rows)
    print(f"summary: {summary['identical']}/{summary['volumes']} identical up to renumbering, "
          f"{summary['same_segment_count']} with equal segment counts, "
          f"{summary['same_mask']} with equal body masks; medians: segments ours "
          f"{summary['median_segments_ours']:g} vs shipped {summary['median_segments_shipped']:g}, "
          f"ARI {summary['median_ari']:.4f}, matched voxel fraction "
          f"{summary['median_matched_voxel_fraction']:.4f}; shipped orientation: "
          f"{', '.join(summary['orientations'])}")
    if args.json:
        atomic_write_json({"min_size": args.min_size, "variant": variant, "rows": rows,
                           "summary": summary}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
