# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled core of the 3D Felzenszwalb segmentation (docs/protocol.md section 13, steps 2 to 5).

Memory layout, and why. A straightforward port stores every edge as two int64 voxel indices
plus a float64 weight, argsorts the weights (another int64 per edge) and gathers reordered
copies: about 90 bytes per edge at peak. Here an edge is one uint64 sort key:

    key = float32(weight) bits << 32  |  voxel_index << 4  |  direction        (13 directions)

Non-negative float32 bit patterns order like the floats, and rounding a float64 to float32
never reverses two weights, so one in-place sort of the keys orders the edges by weight up to
runs whose float64 weights share a float32. The first merge pass puts each such run into
exact float64 order before using it, so edges are taken exactly in float64 weight order (ties
broken by voxel index, then direction). Endpoints and the float64 weight are recomputed from
the key, so the keys are the only per-edge storage: 8 bytes per edge.

Zero-weight edges (equal neighbours, e.g. clipped air in CT) need no key when k > 0: they
come first in the order and always merge (0 < Int + k / |C|), so after them the components
are the connected components of the zero-weight graph, all with Int = 0, whatever their
order; in the second pass they join voxels of one component and are skipped anyway. They are
merged during the scan that counts the keys instead.

Nothing here imports a companion `.pxd`: the module builds from this file alone.
"""
import numpy as np

from libc.math cimport sqrt
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

# The voxel index shares the key's low 32 bits with a 4-bit direction code.
cdef enum:
    DIRECTION_BITS = 4
    NUM_DIRECTIONS = 13
    DIRECTION_MASK = 15

MAX_VOXELS = 1 << (32 - DIRECTION_BITS)

cdef uint64_t LOW32 = 0xFFFFFFFF


cdef struct Graph:
    # The implicit 26-neighbourhood graph of a C-contiguous (depth, height, width) volume.
    const double *pixels
    Py_ssize_t depth, height, width
    Py_ssize_t dz[13]
    Py_ssize_t dy[13]
    Py_ssize_t dx[13]
    Py_ssize_t step[13]      # linear index offset of each direction
    double factor[13]        # weight factor w of each direction


cdef struct WeightedKey:
    double weight
    uint64_t key


cdef Graph _make_graph(const double[:, :, ::1] image, const int64_t[:, ::1] offsets,
                       const double[::1] factors) except *:
    cdef Graph graph
    cdef Py_ssize_t d
    if (offsets.shape[0] != NUM_DIRECTIONS or offsets.shape[1] != 3
            or factors.shape[0] != NUM_DIRECTIONS):
        raise ValueError(f"expected (13, 3) offsets and 13 factors, got ({offsets.shape[0]}, "
                         f"{offsets.shape[1]}) and {factors.shape[0]}")
    graph.depth, graph.height, graph.width = image.shape[0], image.shape[1], image.shape[2]
    if graph.depth * graph.height * graph.width > MAX_VOXELS:
        raise ValueError(f"image has {graph.depth * graph.height * graph.width} voxels; the "
                         f"compact edge keys support at most {MAX_VOXELS}")
    graph.pixels = &image[0, 0, 0]
    for d in range(NUM_DIRECTIONS):
        graph.dz[d], graph.dy[d], graph.dx[d] = offsets[d, 0], offsets[d, 1], offsets[d, 2]
        if (graph.dz[d], graph.dy[d], graph.dx[d]) <= (0, 0, 0):
            raise ValueError(f"offset {d} = ({graph.dz[d]}, {graph.dy[d]}, {graph.dx[d]}) is not a "
                             f"forward neighbour step")
        if abs(graph.dz[d]) > 1 or abs(graph.dy[d]) > 1 or abs(graph.dx[d]) > 1:
            raise ValueError(f"offset {d} = ({graph.dz[d]}, {graph.dy[d]}, {graph.dx[d]}) is not a "
                             f"26-neighbourhood step")
        if not factors[d] > 0:
            raise ValueError(f"weight factor {d} must be positive, got {factors[d]}")
        graph.step[d] = (graph.dz[d] * graph.height + graph.dy[d]) * graph.width + graph.dx[d]
        graph.factor[d] = factors[d]
    return graph


cdef inline double _edge_weight(const Graph *graph, Py_ssize_t voxel, Py_ssize_t d) noexcept nogil:
    """sqrt(w * (I_a - I_b)^2), evaluated in exactly the spec's order of operations."""
    cdef double diff = graph.pixels[voxel] - graph.pixels[voxel + graph.step[d]]
    return sqrt(graph.factor[d] * (diff * diff))


cdef inline double _key_weight(const Graph *graph, uint64_t key) noexcept nogil:
    return _edge_weight(graph, <Py_ssize_t> ((key & LOW32) >> DIRECTION_BITS),
                        <Py_ssize_t> (key & DIRECTION_MASK))


cdef inline uint64_t _make_key(double weight, Py_ssize_t voxel, Py_ssize_t d) noexcept nogil:
    cdef float rounded = <float> weight
    cdef uint32_t bits
    memcpy(&bits, &rounded, 4)
    return ((<uint64_t> bits) << 32) | ((<uint64_t> voxel) << DIRECTION_BITS) | (<uint64_t> d)


cdef inline Py_ssize_t _find_root(int32_t *parent, Py_ssize_t node) noexcept nogil:
    """Root of `node`'s tree, halving the path on the way (amortised near-constant time)."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


cdef inline Py_ssize_t _union_by_size(int32_t *parent, int32_t *size, Py_ssize_t root_a,
                                      Py_ssize_t root_b) noexcept nogil:
    """Hang the smaller tree under the larger one; returns the new root."""
    if size[root_a] < size[root_b]:
        root_a, root_b = root_b, root_a
    parent[root_b] = <int32_t> root_a
    size[root_a] += size[root_b]
    return root_a


cdef Py_ssize_t _scan_edges(const Graph *graph, int32_t *parent, int32_t *size, uint64_t *keys,
                            bint zero_edges_merge) noexcept nogil:
    """Visit every edge once, in (voxel, direction) order.

    With zero_edges_merge, zero-weight edges are merged on the spot when `keys` is NULL (the
    counting scan) and skipped otherwise (the filling scan); every other edge is counted and,
    when `keys` is given, written there. Returns the number of keyed edges.
    """
    cdef Py_ssize_t z, y, x, zz, yy, xx, d, voxel, root_a, root_b, count = 0
    cdef double weight
    for z in range(graph.depth):
        for y in range(graph.height):
            for x in range(graph.width):
                voxel = (z * graph.height + y) * graph.width + x
                for d in range(NUM_DIRECTIONS):
                    zz = z + graph.dz[d]
                    yy = y + graph.dy[d]
                    xx = x + graph.dx[d]
                    if (zz < 0 or zz >= graph.depth or yy < 0 or yy >= graph.height
                            or xx < 0 or xx >= graph.width):
                        continue
                    weight = _edge_weight(graph, voxel, d)
                    if zero_edges_merge and weight == 0.0:
                        if keys == NULL:
                            root_a = _find_root(parent, voxel)
                            root_b = _find_root(parent, voxel + graph.step[d])
                            if root_a != root_b:
                                _union_by_size(parent, size, root_a, root_b)
                        continue
                    if keys != NULL:
                        keys[count] = _make_key(weight, voxel, d)
                    count += 1
    return count


cdef int _compare_weighted_keys(const void *first, const void *second) noexcept nogil:
    """Order by exact float64 weight, then by key (voxel index, direction)."""
    cdef const WeightedKey *a = <const WeightedKey *> first
    cdef const WeightedKey *b = <const WeightedKey *> second
    if a.weight != b.weight:
        return -1 if a.weight < b.weight else 1
    if a.key != b.key:
        return -1 if a.key < b.key else 1
    return 0


cdef int _refine_run(const Graph *graph, uint64_t *keys, Py_ssize_t length) noexcept nogil:
    """Put a run of keys with equal float32 weights into exact float64 order, in place.

    Runs are nearly always in order already (long runs are exact ties), so they are checked
    first and scratch memory is only taken for a run that needs sorting.
    Returns -1 when that memory cannot be allocated.
    """
    cdef Py_ssize_t i
    cdef double previous = _key_weight(graph, keys[0]), weight
    for i in range(1, length):
        weight = _key_weight(graph, keys[i])
        if weight < previous:
            break
        previous = weight
    else:
        return 0
    cdef WeightedKey *scratch = <WeightedKey *> malloc(length * sizeof(WeightedKey))
    if scratch == NULL:
        return -1
    for i in range(length):
        scratch[i].weight = _key_weight(graph, keys[i])
        scratch[i].key = keys[i]
    qsort(scratch, length, sizeof(WeightedKey), _compare_weighted_keys)
    for i in range(length):
        keys[i] = scratch[i].key
    free(scratch)
    return 0


cdef int _merge_pass(const Graph *graph, uint64_t *keys, Py_ssize_t num_keys, int32_t *parent,
                     int32_t *size, double *internal, double k) noexcept nogil:
    """Pass 1: merge when the weight is below min(Int(a) + k/|a|, Int(b) + k/|b|); the merged
    component's Int becomes this weight. Refines equal-float32 runs first (see module doc)."""
    cdef Py_ssize_t edge, run_end = 0, voxel, d, root_a, root_b
    cdef uint64_t key, run_bits
    cdef double weight
    for edge in range(num_keys):
        if edge >= run_end:
            run_bits = keys[edge] >> 32
            run_end = edge + 1
            while run_end < num_keys and (keys[run_end] >> 32) == run_bits:
                run_end += 1
            if run_end - edge > 1 and _refine_run(graph, keys + edge, run_end - edge) != 0:
                return -1
        key = keys[edge]
        voxel = <Py_ssize_t> ((key & LOW32) >> DIRECTION_BITS)
        d = <Py_ssize_t> (key & DIRECTION_MASK)
        root_a = _find_root(parent, voxel)
        root_b = _find_root(parent, voxel + graph.step[d])
        if root_a == root_b:
            continue
        weight = _edge_weight(graph, voxel, d)
        if weight < min(internal[root_a] + k / size[root_a], internal[root_b] + k / size[root_b]):
            internal[_union_by_size(parent, size, root_a, root_b)] = weight
    return 0


cdef void _small_component_pass(const Graph *graph, const uint64_t *keys, Py_ssize_t num_keys,
                                int32_t *parent, int32_t *size, Py_ssize_t min_size) noexcept nogil:
    """Pass 2: in the same order, merge any two components when either is below min_size."""
    cdef Py_ssize_t edge, voxel, root_a, root_b
    for edge in range(num_keys):
        voxel = <Py_ssize_t> ((keys[edge] & LOW32) >> DIRECTION_BITS)
        root_a = _find_root(parent, voxel)
        root_b = _find_root(parent, voxel + graph.step[keys[edge] & DIRECTION_MASK])
        if root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size):
            _union_by_size(parent, size, root_a, root_b)


cdef void _relabel_in_place(int32_t *forest, int32_t *scratch, Py_ssize_t num_nodes) noexcept nogil:
    """Overwrite each node's forest pointer with its component label 0..n-1, numbered by first
    occurrence (= by the component's smallest node index, as the release numbers them)."""
    cdef Py_ssize_t node
    cdef int32_t next_label = 0
    # Point every node straight at its root (no unions happen any more).
    for node in range(num_nodes):
        forest[node] = <int32_t> _find_root(forest, node)
        scratch[node] = -1
    # Each node reads only its own entry, so its label can replace it in place.
    for node in range(num_nodes):
        if scratch[forest[node]] < 0:
            scratch[forest[node]] = next_label
            next_label += 1
        forest[node] = scratch[forest[node]]


def segment_volume(const double[:, :, ::1] image, const int64_t[:, ::1] offsets,
                   const double[::1] factors, double k, Py_ssize_t min_size,
                   bint return_keys=False):
    """Felzenszwalb segmentation of a volume (docs/protocol.md section 13, steps 2 to 5).

    image: (D, H, W) float64, C-contiguous. offsets: (13, 3) int64 forward 26-neighbourhood
    steps. factors: (13,) float64 weight factor w per step. k = scale / 255.
    Returns (D, H, W) int32 labels 0..n-1 numbered by first occurrence in raster order; with
    return_keys, also the (E,) uint64 edge keys in the order the passes used them (zero-weight
    edges excluded when k > 0).
    """
    cdef Graph graph = _make_graph(image, offsets, factors)
    cdef Py_ssize_t num_voxels = graph.depth * graph.height * graph.width
    cdef bint zero_edges_merge = k > 0
    parent_array = np.arange(num_voxels, dtype=np.int32)
    size_array = np.ones(num_voxels, dtype=np.int32)
    cdef int32_t[::1] parent = parent_array
    cdef int32_t[::1] size = size_array
    cdef Py_ssize_t num_keys
    with nogil:
        num_keys = _scan_edges(&graph, &parent[0], &size[0], NULL, zero_edges_merge)
    keys_array = np.empty(num_keys, dtype=np.uint64)
    cdef uint64_t[::1] keys = keys_array
    cdef uint64_t *key_data = &keys[0] if num_keys > 0 else NULL
    if num_keys > 0:
        with nogil:
            _scan_edges(&graph, &parent[0], &size[0], key_data, zero_edges_merge)
        keys_array.sort()  # in place: numpy needs no second buffer for this
    internal_array = np.zeros(num_voxels, dtype=np.float64)
    cdef double[::1] internal = internal_array
    cdef int status = 0
    with nogil:
        status = _merge_pass(&graph, key_data, num_keys, &parent[0], &size[0], &internal[0], k)
        if status == 0 and min_size > 1:
            _small_component_pass(&graph, key_data, num_keys, &parent[0], &size[0], min_size)
        if status == 0:
            _relabel_in_place(&parent[0], &size[0], num_voxels)
    if status != 0:
        raise MemoryError("cannot allocate scratch memory to order equal-weight edges")
    labels = parent_array.reshape(graph.depth, graph.height, graph.width)
    return (labels, keys_array) if return_keys else labels


def key_weights(const double[:, :, ::1] image, const int64_t[:, ::1] offsets,
                const double[::1] factors, const uint64_t[::1] keys):
    """Exact float64 weight of each key (for checks and tests). Returns (E,) float64."""
    cdef Graph graph = _make_graph(image, offsets, factors)
    weights_array = np.empty(keys.shape[0], dtype=np.float64)
    cdef double[::1] weights = weights_array
    cdef Py_ssize_t i
    for i in range(keys.shape[0]):
        weights[i] = _key_weight(&graph, keys[i])
    return weights_array


def segment_edge_list(const int64_t[:, ::1] edges, const double[::1] weights,
                      Py_ssize_t num_nodes, double k, Py_ssize_t min_size):
    """The release's merging loops over an explicit, already sorted edge list.

    Kept for the benchmark's straightforward baseline (bench/naive_felzenszwalb.py) and for
    cross-checks; the package itself uses `segment_volume`. Same union-find as
    scikit-image's Felzenszwalb code: the smaller root index becomes the root, paths are
    compressed while joining. edges: (E, 2) int64; weights: (E,) float64, ascending.
    Returns the (num_nodes,) int64 forest (parent pointers); roots satisfy forest[r] == r.
    """
    if edges.shape[0] != weights.shape[0] or (edges.shape[0] > 0 and edges.shape[1] != 2):
        raise ValueError(f"edges must be (E, 2) and weights (E,), got ({edges.shape[0]}, "
                         f"{edges.shape[1]}) and {weights.shape[0]}")
    forest_array = np.arange(num_nodes, dtype=np.int64)
    size_array = np.ones(num_nodes, dtype=np.int64)
    internal_array = np.zeros(num_nodes, dtype=np.float64)
    cdef int64_t[::1] forest = forest_array
    cdef int64_t[::1] size = size_array
    cdef double[::1] internal = internal_array
    cdef Py_ssize_t edge, root_a, root_b, root
    with nogil:
        for edge in range(edges.shape[0]):
            root_a = _min_root(&forest[0], edges[edge, 0])
            root_b = _min_root(&forest[0], edges[edge, 1])
            if root_a == root_b:
                continue
            if weights[edge] < min(internal[root_a] + k / size[root_a],
                                   internal[root_b] + k / size[root_b]):
                root = _join_min_root(&forest[0], edges[edge, 0], edges[edge, 1], root_a, root_b)
                size[root] = size[root_a] + size[root_b]
                internal[root] = weights[edge]
        for edge in range(edges.shape[0]):
            root_a = _min_root(&forest[0], edges[edge, 0])
            root_b = _min_root(&forest[0], edges[edge, 1])
            if root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size):
                root = _join_min_root(&forest[0], edges[edge, 0], edges[edge, 1], root_a, root_b)
                size[root] = size[root_a] + size[root_b]
    return forest_array


cdef inline Py_ssize_t _min_root(int64_t *forest, Py_ssize_t node) noexcept nogil:
    while forest[node] < node:
        node = forest[node]
    return node


cdef inline void _point_path_to(int64_t *forest, Py_ssize_t node, Py_ssize_t root) noexcept nogil:
    cdef Py_ssize_t next_node
    while forest[node] < node:
        next_node = forest[node]
        forest[node] = root
        node = next_node
    forest[node] = root


cdef inline Py_ssize_t _join_min_root(int64_t *forest, Py_ssize_t a, Py_ssize_t b,
                                      Py_ssize_t root_a, Py_ssize_t root_b) noexcept nogil:
    cdef Py_ssize_t root = min(root_a, root_b)
    _point_path_to(forest, a, root)
    _point_path_to(forest, b, root)
    return root
