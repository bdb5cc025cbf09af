"""The straightforward NumPy-edges port of 3D Felzenszwalb: the benchmark's baseline.

It builds the graph the way the release does: per direction, NumPy slices give float64
weights and int64 (a, b) voxel pairs; all 13 directions are stacked, argsorted, and gathered
into sorted copies; then scikit-image-style union-find loops merge. Roughly 90 bytes per edge
at peak, which is what `fafnet.supervoxels` avoids. Not part of the package on purpose.

`loop="compiled"` runs the merging loops in the package's compiled `segment_edge_list` (the
fair speed baseline); `loop="python"` runs an independent pure-Python version of them, slow
but sharing no code with the package (tests use it on tiny volumes as a reference).
"""
import numpy as np
from scipy import ndimage


def direction_weight(dz: int, dy: int, dx: int, s: float) -> float:
    """Weight factor w of one neighbour step, straight from docs/protocol.md section 13 step 2."""
    if dz == 0:
        return 1.0
    in_plane_moves = abs(dy) + abs(dx)
    if in_plane_moves == 0:
        return s ** 2
    if in_plane_moves == 1:
        return (1 + s ** 2) / 2
    return (2 + s ** 2) / 3


def forward_offsets():
    """The 13 neighbour steps (dz, dy, dx) that are lexicographically positive."""
    steps = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return [step for step in steps if step > (0, 0, 0)]


def _overlap(step: int, length: int):
    """Slices of the source and destination voxels for one axis step."""
    if step >= 0:
        return slice(0, length - step), slice(step, length)
    return slice(-step, length), slice(0, length + step)


def build_sorted_edges(image: np.ndarray, spacing=(1, 1, 1)):
    """All edges as (E, 2) int64 voxel pairs and (E,) float64 weights, sorted by weight."""
    s = float(spacing[0]) / float(spacing[1])
    index = np.arange(image.size, dtype=np.int64).reshape(image.shape)
    costs, edges = [], []
    for dz, dy, dx in forward_offsets():
        (sz, tz), (sy, ty), (sx, tx) = (_overlap(dz, image.shape[0]), _overlap(dy, image.shape[1]),
                                        _overlap(dx, image.shape[2]))
        w = direction_weight(dz, dy, dx, s)
        costs.append(np.sqrt(w * (image[sz, sy, sx] - image[tz, ty, tx]) ** 2).ravel())
        edges.append(np.stack([index[sz, sy, sx].ravel(), index[tz, ty, tx].ravel()], axis=1))
    costs = np.concatenate(costs)
    edges = np.concatenate(edges)
    order = np.argsort(costs)
    return np.ascontiguousarray(edges[order]), np.ascontiguousarray(costs[order])


def merge_sorted_edges_python(edges, costs, num_nodes: int, k: float, min_size: int):
    """Both merging passes in plain Python; returns the forest (list of parent pointers)."""
    forest = list(range(num_nodes))
    size = [1] * num_nodes
    internal = [0.0] * num_nodes

    def find(node):
        while forest[node] != node:
            node = forest[node]
        return node

    def join(root_a, root_b):
        root, child = min(root_a, root_b), max(root_a, root_b)
        forest[child] = root
        size[root] = size[root_a] + size[root_b]
        return root

    for (a, b), cost in zip(edges.tolist(), costs.tolist()):
        root_a, root_b = find(a), find(b)
        if root_a != root_b and cost < min(internal[root_a] + k / size[root_a],
                                           internal[root_b] + k / size[root_b]):
            internal[join(root_a, root_b)] = cost
    for a, b in edges.tolist():
        root_a, root_b = find(a), find(b)
        if root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size):
            join(root_a, root_b)
    return np.array([find(node) for node in range(num_nodes)], dtype=np.int64)


def naive_felzenszwalb_3d(image, scale=1, sigma=0.8, min_size=20, spacing=(1, 1, 1),
                          loop="compiled"):
    """Same contract as fafnet.supervoxels.felzenszwalb_3d, the straightforward way."""
    image = np.asarray(image, dtype=np.float64)
    k = float(scale) / 255.0
    if sigma > 0:
        image = ndimage.gaussian_filter(image, sigma=float(sigma) / np.asarray(spacing, float))
    edges, costs = build_sorted_edges(image, spacing)
    if loop == "compiled":
        from fafnet.supervoxels._felzenszwalb_3d import segment_edge_list
        forest = segment_edge_list(edges, costs, image.size, k, int(min_size))
    elif loop == "python":
        forest = merge_sorted_edges_python(edges, costs, image.size, k, int(min_size))
    else:
        raise ValueError(f"loop must be 'compiled' or 'python', got {loop!r}")
    del edges, costs
    # Unravel the forest to roots, then number the roots (the release's relabelling).
    flat, previous = forest, None
    while previous is None or (previous != flat).any():
        previous, flat = flat, flat[flat]
    labels = np.unique(flat, return_inverse=True)[1]
    return labels.reshape(image.shape)
