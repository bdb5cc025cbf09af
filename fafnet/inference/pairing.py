"""Which support slice segments which query slice in segment.py, and the clean-up of its
predictions (docs/protocol.md section 18). Slice indices here are on the network's grid (the
scans after pre-processing and in-plane resampling).

- With a slice range (`range_pairing`), the evaluation's pairing exactly: support slices at
  positions int(f * count), f = 1/6, 1/2, 5/6, of the support's slices holding the label
  (fafnet.episodes.evaluation.protocol_support_slices); the query slices in the range cut into 3
  contiguous chunks (chunk_bounds); chunk i segmented with support slice i.
- Without one (`relative_pairing`): query slice k of n gets the support slice at the same
  relative position of the scan, u = s0 + (k + 0.5) / n * (s1 - s0) on the support's slices
  s0..s1-1, or the nearest support slice holding the label when that one does not (the centre
  s + 0.5 nearest to u; ties to the lower slice). This assumes the two scans cover the same
  anatomy from end to end; the cleaning `largest_component` then drops what was found where
  the organ is not.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from fafnet.episodes.evaluation import chunk_bounds, protocol_support_slices
from fafnet.evaluation.predict import Run, chunk_runs

RANGE, RELATIVE = "range", "relative"
# 26-connectivity: voxels touching at a corner across slices belong to one structure.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Pairing:
    """A query's slices and the support slices that segment them.

    mode: RANGE or RELATIVE.
    support_slices: the support slices used (ascending); runs refer to them by position.
    query_slices: the query slices segmented (ascending).
    runs: (position in support_slices, start, end) over query_slices (fafnet/evaluation/predict.py).
    """
    mode: str
    support_slices: List[int]
    query_slices: List[int]
    runs: List[Run]


def slices_in_range(positions: np.ndarray, z0: int, z1: int) -> List[int]:
    """The slices whose centre lies on original slices z0..z1-1: `positions` [Z] gives each
    slice's continuous index on the original grid (fafnet.io.resample.slice_positions_on), and
    slice k counts as on original slice round(positions[k]) (halves rounded up)."""
    nearest = np.floor(np.asarray(positions, dtype=np.float64) + 0.5)
    return np.flatnonzero((nearest >= z0) & (nearest < z1)).tolist()


def range_pairing(support_with_label: Sequence[int], query_slices: Sequence[int]) -> Pairing:
    """The evaluation's pairing over `query_slices` (see the module docstring)."""
    support = protocol_support_slices(list(support_with_label))
    return Pairing(RANGE, support, list(query_slices), chunk_runs(chunk_bounds(len(query_slices))))


def relative_support_slice(k: int, n_query: int, support_extent: Tuple[int, int],
                           support_with_label: Sequence[int]) -> int:
    """The support slice of query slice k of n_query without a range (module docstring)."""
    s0, s1 = support_extent
    u = s0 + (k + 0.5) / n_query * (s1 - s0)
    candidates = np.asarray(support_with_label, dtype=np.float64)
    return int(support_with_label[int(np.argmin(np.abs(candidates + 0.5 - u)))])   # argmin: first = lower


def relative_pairing(support_with_label: Sequence[int], support_extent: Tuple[int, int],
                     query_slices: Sequence[int]) -> Pairing:
    """Every query slice with the support slice at its relative position; consecutive query
    slices that share a support slice form one run."""
    n = len(query_slices)
    chosen = [relative_support_slice(k, n, support_extent, support_with_label) for k in range(n)]
    support = sorted(set(chosen))
    runs: List[Run] = []
    for k, slice_index in enumerate(chosen):
        position = support.index(slice_index)
        if runs and runs[-1][0] == position:
            runs[-1] = (position, runs[-1][1], k + 1)
        else:
            runs.append((position, k, k + 1))
    return Pairing(RELATIVE, support, list(query_slices), runs)


def largest_component(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """(the largest 26-connected component of a bool [Z, H, W] mask, the number of voxels
    removed); the first in scan order wins a tie; an empty mask stays empty."""
    components, count = ndimage.label(mask, structure=_CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool, copy=True), 0
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = components == int(np.argmax(sizes))
    return kept, int(np.count_nonzero(mask)) - int(sizes.max())


def combine_labels(labels: Sequence[int], masks: Sequence[np.ndarray], probabilities: Sequence[np.ndarray],
                   dtype) -> np.ndarray:
    """One label map [Z, H, W] from each label's own mask: where several labels claim a voxel,
    the one with the highest foreground probability gets it (ties: the one listed first)."""
    scores = np.stack([np.where(m, p, -1.0) for m, p in zip(masks, probabilities)])
    winner = np.argmax(scores, axis=0)
    out = np.asarray(labels, dtype=dtype)[winner]
    out[scores.max(axis=0) < 0] = 0
    return out
