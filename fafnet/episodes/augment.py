"""Episode augmentations (docs/protocol.md section 9.2): gamma, affine and elastic.

Images here are single-channel float32 slices (the network's 3 channels are identical
copies, so transforming one and repeating it later gives the same result for a third of the
work). Every random draw comes from the `numpy.random.Generator` passed in, so an episode
is a pure function of its generator's seed.
"""
import math
from typing import Tuple

import cv2
import numpy as np

GAMMA_RANGE = (0.5, 1.5)
ROTATION_DEG = 5.0
SHIFT_PX = 5.0
SHEAR_DEG = 5.0
ZOOM_RANGE = (0.9, 1.2)
ELASTIC_ALPHA = 10.0
ELASTIC_SIGMA = 5.0
ELASTIC_KSIZE = 21
# The release passes 3 (INTER_AREA) to warpAffine, where OpenCV treats it as bilinear.
AFFINE_FLAGS = 3
_EPS = 1e-5


def gamma_transform(images: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma-correct a group of images with one shared intensity range.

    x -> r * ((x - lo + 1e-5) / r) ** gamma + lo, with lo = min and r = max - lo + 1e-5 over
    the whole group (all supports together, or the query alone).

    Args:
        images: float array of any shape, e.g. [N, H, W].
        gamma: the exponent.
    Returns:
        float32 array of the same shape.
    """
    lo = float(images.min())
    r = float(images.max()) - lo + _EPS
    out = r * np.power((images - lo + _EPS) / r, gamma) + lo
    return out.astype(np.float32)


def random_gamma(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`gamma_transform` with gamma ~ U(0.5, 1.5)."""
    return gamma_transform(images, rng.uniform(*GAMMA_RANGE))


def _homogeneous(matrix_2x3: np.ndarray) -> np.ndarray:
    return np.vstack([matrix_2x3, [0.0, 0.0, 1.0]])


def affine_matrix(shape: Tuple[int, int], rotation_deg: float = 0.0,
                  shift: Tuple[float, float] = (0.0, 0.0), shear_deg: float = 0.0,
                  zoom: float = 1.0) -> np.ndarray:
    """The forward (source -> destination) 2 x 3 affine matrix zoom o shear o shift o rotation.

    Rotation and zoom act about the image centre ((W - 1) / 2, (H - 1) / 2); the shift is
    (x, y) in pixels; the shear by angle a is [[1, -sin a, 0], [0, cos a, 0]].
    Points are (x, y) = (column, row), as OpenCV expects.
    """
    height, width = shape
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    rotation = _homogeneous(cv2.getRotationMatrix2D(centre, rotation_deg, 1.0))
    translation = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]], [0.0, 0.0, 1.0]])
    a = math.radians(shear_deg)
    shear = np.array([[1.0, -math.sin(a), 0.0], [0.0, math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    scaling = _homogeneous(cv2.getRotationMatrix2D(centre, 0.0, zoom))
    return (scaling @ shear @ translation @ rotation)[:2]


def random_affine_matrix(shape: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """`affine_matrix` with rotation U(-5, 5) deg, shift U(-5, 5) px per axis, shear U(-5, 5)
    deg and zoom U(0.9, 1.2), drawn in that order."""
    rotation = rng.uniform(-ROTATION_DEG, ROTATION_DEG)
    shift = (rng.uniform(-SHIFT_PX, SHIFT_PX), rng.uniform(-SHIFT_PX, SHIFT_PX))
    shear = rng.uniform(-SHEAR_DEG, SHEAR_DEG)
    zoom = rng.uniform(*ZOOM_RANGE)
    return affine_matrix(shape, rotation, shift, shear, zoom)


def warp_affine(channels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample [H, W, C] (C <= 4) bilinearly under a forward 2 x 3 matrix, zero outside.

    OpenCV interpolates more than 4 channels with a coarse fixed-point table, so callers
    pass small stacks (one image with its mask).
    """
    height, width = channels.shape[:2]
    out = cv2.warpAffine(channels, matrix.astype(np.float64), (width, height), flags=AFFINE_FLAGS,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(channels.shape)


def random_elastic_field(shape: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Displacements [2, H, W] (dx, dy): uniform noise in [-1, 1] blurred by a Gaussian
    (sigma 5, 21 x 21 kernel) and scaled by alpha = 10."""
    fields = []
    for _ in range(2):
        noise = rng.uniform(-1.0, 1.0, size=shape)
        blurred = cv2.GaussianBlur(noise, (ELASTIC_KSIZE, ELASTIC_KSIZE), ELASTIC_SIGMA)
        fields.append(blurred * ELASTIC_ALPHA)
    return np.stack(fields).astype(np.float32)


def warp_elastic(channels: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Sample [H, W, C] (C <= 4) at (x + dx, y + dy) with linear interpolation, reflecting at
    the border."""
    height, width = channels.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    out = cv2.remap(channels, cols + field[0], rows + field[1], interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    return out.reshape(channels.shape)


def random_geometric(images: np.ndarray, masks: np.ndarray,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A random affine, then a random elastic deformation, applied jointly to each image and
    its mask; masks are rounded back to {0, 1}.

    Every pair gets its own draw (affine, then elastic field, pair after pair), as the
    release transforms each support shot separately; one pair (1 shot, or the query) draws
    exactly one affine and one field.

    Args:
        images: float32 [N, H, W]; masks: float32 [N, H, W] in {0, 1}.
    Returns:
        (images [N, H, W] float32, masks [N, H, W] float32 in {0, 1}).
    """
    shape = images.shape[1:]
    out_images, out_masks = np.empty_like(images), np.empty_like(masks)
    for i, (image, mask) in enumerate(zip(images, masks)):
        matrix = random_affine_matrix(shape, rng)
        field = random_elastic_field(shape, rng)
        stacked = np.ascontiguousarray(np.stack([image, mask], axis=-1), dtype=np.float32)
        stacked = warp_elastic(warp_affine(stacked, matrix), field)
        out_images[i] = stacked[..., 0]
        out_masks[i] = np.clip(np.rint(stacked[..., 1]), 0, 1)
    return out_images, out_masks


def augment_episode(support_images: np.ndarray, support_masks: np.ndarray,
                    query_images: np.ndarray, query_masks: np.ndarray,
                    rng: np.random.Generator):
    """Step 7 of episode sampling: gamma on the query or on the supports (coin flip; one
    gamma and one intensity range for all supports together), then the geometric transform
    (affine then elastic, a fresh draw per support shot) on the query or on the supports
    (another flip).

    Args:
        support_images, support_masks: float32 [K, H, W]; query_images, query_masks: [1, H, W].
    Returns:
        the four arrays, augmented, same shapes and dtypes.
    """
    if rng.random() < 0.5:
        support_images = random_gamma(support_images, rng)
    else:
        query_images = random_gamma(query_images, rng)
    if rng.random() < 0.5:
        support_images, support_masks = random_geometric(support_images, support_masks, rng)
    else:
        query_images, query_masks = random_geometric(query_images, query_masks, rng)
    return support_images, support_masks, query_images, query_masks
