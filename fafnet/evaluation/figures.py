"""Evaluation figures: one PNG per class that shows what the protocol did.

Row 0 holds the support slice of each chunk with its mask; every further row is one query
volume, with the middle slice of each chunk showing the ground truth and the prediction,
each tile captioned with that slice's Dice (and the row with the volume's Dice). With more
than `MAX_QUERY_ROWS` query volumes the rows are the best, the median and the worst volume by
Dice, and the title says so. `tiles_figure_png` draws any grid of such tiles (segment.py's
overview). Masks are drawn filled and semi-transparent with an opaque
outline (torchvision's draw_segmentation_masks) in colours of the Okabe-Ito palette, which
stay distinct under the common colour-vision deficiencies; where prediction and ground truth
overlap the two fills mix.
"""
import io
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.utils import draw_segmentation_masks

from fafnet.evaluation.metrics import dice_score

# Okabe & Ito (2008), "Color Universal Design".
SUPPORT_COLOUR = (0, 158, 115)      # bluish green
TRUTH_COLOUR = (0, 114, 178)        # blue
PREDICTION_COLOUR = (213, 94, 0)    # vermillion
FILL_ALPHA = 0.35
MAX_QUERY_ROWS = 3


def _to_rgb(image: np.ndarray) -> torch.Tensor:
    """A z-scored slice as uint8 RGB [3, H, W], windowed to its 1st-99th percentiles."""
    low, high = np.percentile(image, (1, 99))
    grey = np.clip((image - low) / (high - low + 1e-8), 0, 1) * 255
    return torch.from_numpy(grey.astype(np.uint8)).expand(3, -1, -1).contiguous()


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def overlay(image: np.ndarray, masks: Sequence[Tuple[np.ndarray, Tuple[int, int, int]]]) -> np.ndarray:
    """[H, W, 3] uint8: the image with each (mask, colour) filled semi-transparently and outlined."""
    canvas = _to_rgb(image)
    for mask, colour in masks:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        canvas = draw_segmentation_masks(canvas, torch.from_numpy(mask), alpha=FILL_ALPHA, colors=colour)
        canvas = draw_segmentation_masks(canvas, torch.from_numpy(_outline(mask)), alpha=1.0, colors=colour)
    return canvas.permute(1, 2, 0).numpy()


def choose_queries(dice: Sequence[float]) -> Tuple[List[int], str]:
    """Positions of the query volumes to show and how they were chosen."""
    order = sorted(range(len(dice)), key=lambda i: dice[i], reverse=True)
    if len(order) <= MAX_QUERY_ROWS:
        return order, f"all {len(order)} query volume(s)"
    return [order[0], order[len(order) // 2], order[-1]], \
        f"the best, median and worst of {len(order)} query volumes by Dice"


def class_figure_png(title: str, support: Dict, outcomes: Sequence, queries: Sequence[Dict]) -> bytes:
    """PNG bytes of the figure described in the module docstring.

    Args:
        support: the TestDataset support dict ("images" [n_part, 3, H, W], "masks",
            "slice_indices", "volume_index").
        outcomes: per query volume, an object with `volume_index`, `slice_indices`,
            `prediction` (bool [n, H, W]) and `dice`.
        queries: the matching TestDataset query dicts ("images", "labels", "chunks").
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    shown, choice = choose_queries([o.dice for o in outcomes])
    n_part = len(support["slice_indices"])
    figure = Figure(figsize=(2.6 * n_part, 2.8 * (1 + len(shown)) + 0.8), dpi=100, layout="constrained")
    axes = np.atleast_2d(figure.subplots(1 + len(shown), n_part, squeeze=False))
    for part in range(n_part):
        axis = axes[0, part]
        axis.imshow(overlay(support["images"][part, 0].numpy(), [(support["masks"][part].numpy() > 0, SUPPORT_COLOUR)]))
        axis.set_title(f"support v{support['volume_index']} z{support['slice_indices'][part]}\n(chunk {part})",
                       fontsize=8)
    for row, position in enumerate(shown, start=1):
        outcome, query = outcomes[position], queries[position]
        for part, (start, end) in enumerate(query["chunks"]):
            axis = axes[row, part]
            if end <= start:
                axis.set_title(f"query v{outcome.volume_index}: chunk {part} empty", fontsize=8)
                continue
            i = (start + end - 1) // 2
            truth, predicted = query["labels"][i].numpy() > 0, outcome.prediction[i]
            axis.imshow(overlay(query["images"][i, 0].numpy(), [(truth, TRUTH_COLOUR), (predicted, PREDICTION_COLOUR)]))
            axis.set_title(f"query v{outcome.volume_index} z{outcome.slice_indices[i]} (chunk {part})\n"
                           f"slice Dice {dice_score(predicted, truth):.2f}, volume {outcome.dice:.2f}", fontsize=8)
    for axis in axes.ravel():
        axis.set_axis_off()
    legend = [Patch(color=np.array(c) / 255, label=label) for c, label in
              ((SUPPORT_COLOUR, "support mask"), (TRUTH_COLOUR, "ground truth"), (PREDICTION_COLOUR, "prediction"))]
    figure.legend(handles=legend, loc="outside lower center", ncols=3, fontsize=9)
    figure.suptitle(f"{title}\nshowing {choice}", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class Tile:
    """One panel of `tiles_figure_png`: a slice [H, W], the (mask, colour) overlays drawn on
    it (`overlay`), its caption, and its pixel aspect (row spacing / column spacing)."""
    image: np.ndarray
    masks: Sequence[Tuple[np.ndarray, Tuple[int, int, int]]]
    caption: str
    aspect: float = 1.0


def tiles_figure_png(title: str, rows: Sequence[Sequence[Tile]],
                     legend: Sequence[Tuple[Tuple[int, int, int], str]]) -> bytes:
    """PNG bytes of a grid of tiles, one list per row (rows may differ in length), in the
    style of the evaluation figures (segment.py's overview: the support slice with its mask,
    then query slices with the prediction)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n_columns = max(len(row) for row in rows)
    figure = Figure(figsize=(2.6 * n_columns, 2.8 * len(rows) + 0.8), dpi=100, layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(rows), n_columns, squeeze=False))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            axes[r, c].imshow(overlay(tile.image, tile.masks), aspect=tile.aspect)
            axes[r, c].set_title(tile.caption, fontsize=8)
    for axis in axes.ravel():
        axis.set_axis_off()
    handles = [Patch(color=np.array(colour) / 255, label=label) for colour, label in legend]
    figure.legend(handles=handles, loc="outside lower center", ncols=max(1, len(handles)), fontsize=9)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
