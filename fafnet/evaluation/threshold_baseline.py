"""The best single global intensity threshold per organ: how far intensity alone gets.

A few-shot benchmark is only meaningful when an organ cannot be segmented by one intensity
threshold. For each organ this finds the one threshold t and direction (image > t or
image < t), shared by every volume, that maximises the mean per-volume Dice, each volume's
Dice computed like the evaluation protocol's: over the slices that contain the organ, every
pixel of those slices counted. Intensities are the stored ones ([0, 255] for the
pre-processed CT layout), so "global" means one value for the whole dataset.

    python -m fafnet.evaluation.threshold_baseline --data-dir demo_output/data/synthetic_CT_normalized
"""
import argparse
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from fafnet.io.nifti import read_volume
from fafnet.datasets.specs import SABS_CLASSES

DEFAULT_ORGANS = (1, 2, 3, 6)   # spleen, right kidney, left kidney, liver (SABS ids)
N_BINS = 256


def _histograms(image: np.ndarray, is_organ: np.ndarray, edges: np.ndarray
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel counts per intensity bin inside and outside the organ."""
    return (np.histogram(image[is_organ], edges)[0].astype(np.int64),
            np.histogram(image[~is_organ], edges)[0].astype(np.int64))


def threshold_dice_curves(volumes: Sequence[Tuple[np.ndarray, np.ndarray]], organ: int,
                          edges: np.ndarray) -> Dict[str, np.ndarray]:
    """Mean per-volume Dice for every candidate threshold and both directions.

    Args:
        volumes: (image, label) pairs, each [Z, H, W]; volumes without the organ are skipped.
        organ: the label value.
        edges: increasing bin edges; candidate thresholds are edges[1:-1].
    Returns:
        {"above": [len(edges) - 2], "below": [...]}: the mean Dice of predicting
        image >= edges[i + 1] ("above") or image < edges[i + 1] ("below").
    """
    above, below, used = 0.0, 0.0, 0
    for image, label in volumes:
        slices = np.flatnonzero((label == organ).any(axis=(1, 2)))
        if len(slices) == 0:
            continue
        inside, outside = _histograms(image[slices], label[slices] == organ, edges)
        total = inside.sum()
        # Predicting "above the i-th inner edge" takes the bins from i + 1 on.
        in_above, out_above = np.cumsum(inside[::-1])[::-1][1:], np.cumsum(outside[::-1])[::-1][1:]
        in_below, out_below = np.cumsum(inside)[:-1], np.cumsum(outside)[:-1]
        above = above + 2 * in_above / (in_above + out_above + total)
        below = below + 2 * in_below / (in_below + out_below + total)
        used += 1
    if used == 0:
        raise ValueError(f"organ {organ} occurs in none of the {len(volumes)} volumes")
    return {"above": above / used, "below": below / used}


def best_threshold_dice(volumes: Sequence[Tuple[np.ndarray, np.ndarray]], organ: int,
                        n_bins: int = N_BINS) -> Dict[str, object]:
    """The best single global threshold for `organ` over `volumes` ((image, label) pairs).

    Returns:
        {"dice": mean per-volume Dice in [0, 1], "threshold": t, "direction": "above" (image
        >= t) or "below" (image < t)}.
    """
    low = min(float(image.min()) for image, _ in volumes)
    high = max(float(image.max()) for image, _ in volumes)
    edges = np.linspace(low, high + 1e-6 * max(1.0, abs(high)), n_bins + 1)
    curves = threshold_dice_curves(volumes, organ, edges)
    direction = max(curves, key=lambda name: curves[name].max())
    best = int(np.argmax(curves[direction]))
    return {"dice": float(curves[direction][best]), "threshold": float(edges[best + 1]),
            "direction": direction}


def load_volumes(data_dir: str, indices: Optional[Sequence[int]] = None
                 ) -> Tuple[list, list]:
    """(image, label) pairs of the folder's volumes (fafnet/io/layout.py), all or those at the
    positions `indices`, and the positions read."""
    from fafnet.io.layout import DatasetLayout
    from fafnet.episodes.volumes import load_labels
    layout = DatasetLayout(data_dir)
    indices = list(range(len(layout)) if indices is None else indices)
    volumes = []
    for i in indices:
        files = layout[i]
        # The stored intensities (not z-scored, unlike the experiments' load_image).
        image, geometry = read_volume(files.image, dtype=np.float32)
        volumes.append((image, load_labels(files.label, image.shape, files.image, like_geometry=geometry)))
    return volumes, indices


def threshold_table(data_dir: str, organs: Sequence[int] = DEFAULT_ORGANS,
                    indices: Optional[Sequence[int]] = None) -> str:
    """A Markdown table of the best global threshold's Dice (%) per organ."""
    volumes, indices = load_volumes(data_dir, indices)
    lines = [f"best single global intensity threshold, {len(indices)} volumes of {data_dir}",
             "| organ | Dice (%) | threshold | predicted where |", "|---|---|---|---|"]
    for organ in organs:
        best = best_threshold_dice(volumes, organ)
        sign = ">=" if best["direction"] == "above" else "<"
        lines.append(f"| {SABS_CLASSES.get(organ, organ)} | {100 * best['dice']:.2f} | "
                     f"{best['threshold']:.1f} | image {sign} threshold |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fafnet.evaluation.threshold_baseline",
        description="Dice of the best single global intensity threshold per organ (mean over "
                    "volumes, each over the slices containing the organ).")
    parser.add_argument("--data-dir", required=True, help="folder with image_<i>/label_<i>.nii.gz")
    parser.add_argument("--organs", type=int, nargs="+", default=list(DEFAULT_ORGANS),
                        help="label ids (default: 1 2 3 6, the SABS test organs)")
    parser.add_argument("--volumes", type=int, nargs="+", default=None,
                        help="volume positions in the folder's order by number (default: every volume)")
    args = parser.parse_args(argv)
    print(threshold_table(args.data_dir, args.organs, args.volumes))


if __name__ == "__main__":
    main()
