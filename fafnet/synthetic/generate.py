"""A small abdominal-CT-like phantom dataset in the normalised SABS layout.

Each subject is a (slices, size, size) float32 volume with intensities on the [0, 255] scale
of pre-processed CT (air 0, fat ~20, soft tissue ~100-150, contrast vessels and bone
brighter) and a label volume with SABS ids: spleen 1, right kidney 2, left kidney 3,
liver 6, stomach 7, aorta 8, IVC 9. Unlabelled structures (vertebra, spinal canal, ribs,
back and psoas muscles, abdominal wall, bowel loops with gas) share the organs' intensity
ranges, so no single threshold separates an organ, and edges are blurred (partial volume).

Per subject, everything varies: body and organ positions, sizes and orientations, a smooth
random deformation shared by all structures plus lumpy per-organ surfaces, intensities,
texture, noise, and the header spacing. Subject i depends only on (seed, i), so a dataset
of N subjects is the first N of any larger one with the same seed.

Array axes are (slice, row, column); slice 0 is the inferior end, row 0 anterior, and the
patient's right (liver) is on the image's left as in radiological display.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from fafnet.io.atomic import atomic_write_json
from fafnet.io.layout import (SYNTHETIC_MANIFEST_NAME, image_name, label_name, supervoxel_folder_name,
                              supervoxel_name)
from fafnet.io.nifti import Geometry, write_volume

SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, LIVER, STOMACH, AORTA, IVC = 1, 2, 3, 6, 7, 8, 9
UNLABELLED = None   # paint() label for structures that are background in the label map
KEEP_LABELS = -1    # paint() label for detail inside an organ (its label stays)
MANIFEST = SYNTHETIC_MANIFEST_NAME
GENERATOR_VERSION = 1  # bump when the generated volumes change for a given seed


@dataclass
class Canvas:
    """The volume being drawn: intensity map before blur and noise, label map, texture
    amplitude per voxel, and the anatomy coordinates of every voxel.

    Image coordinates run over u: columns, -1 (image left) .. 1; v: rows, -1 (anterior) .. 1;
    w: slices, 0 .. 1. Anatomy coordinates (`u`, `v`, `w`, all (slices, size, size)) are the
    image coordinates moved by the subject's global pose (in-plane rotation `angle`, `scale`,
    `shift`, slice stretch `w_scale`) and then by a smooth warp of at most `warp` per axis;
    every structure is defined in anatomy coordinates.
    """
    intensity: np.ndarray
    label: np.ndarray
    texture: np.ndarray
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    angle: float
    scale: float
    shift: Tuple[float, float, float]
    w_scale: float
    warp: float

    def to_anatomy(self, u, v, w):
        """Image coordinates -> anatomy coordinates before the warp."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return ((cos * u + sin * v) / self.scale - self.shift[0],
                (-sin * u + cos * v) / self.scale - self.shift[1],
                (w - 0.5) / self.w_scale + 0.5 - self.shift[2])

    def to_image(self, u, v, w):
        """Inverse of `to_anatomy`."""
        a, b = (u + self.shift[0]) * self.scale, (v + self.shift[1]) * self.scale
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return cos * a - sin * b, sin * a + cos * b, (w + self.shift[2] - 0.5) * self.w_scale + 0.5


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in normalised coordinates, rotated in-plane by `angle` (radians), with a
    lumpy surface: `bumps` random low-frequency waves added to its ellipsoidal distance."""
    centre: Tuple[float, float, float]     # (u, v, w)
    semi_axes: Tuple[float, float, float]  # (u, v, w)
    angle: float = 0.0
    bumps: Tuple[Tuple[float, ...], ...] = ()  # (amplitude, fu, fv, fw, phase) per wave

    def distance(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Normalised distance: < 1 inside. Broadcasts over u, v, w."""
        du, dv, dw = u - self.centre[0], v - self.centre[1], w - self.centre[2]
        cos, sin = float(np.cos(self.angle)), float(np.sin(self.angle))
        ru, rv = cos * du + sin * dv, -sin * du + cos * dv
        d = np.sqrt((ru / self.semi_axes[0]) ** 2 + (rv / self.semi_axes[1]) ** 2
                    + (dw / self.semi_axes[2]) ** 2)
        for amplitude, fu, fv, fw, phase in self.bumps:
            d = d + amplitude * np.sin(fu * ru + fv * rv + fw * dw + phase)
        return d


def lumpy(rng: np.random.Generator, centre, semi_axes, angle=0.0, roughness=0.08,
          waves: int = 3) -> Ellipsoid:
    """An ellipsoid with `waves` random surface waves of total amplitude about `roughness`."""
    # Wave frequencies scale with the inverse semi-axes: a few bumps per organ, whatever its size.
    bumps = tuple((roughness * rng.uniform(0.5, 1.0) / np.sqrt(waves),
                   *(rng.uniform(-1, 1, 3) * np.array([2.0, 2.0, 1.5]) / np.array(semi_axes)
                     * np.pi / 2), rng.uniform(0, 2 * np.pi)) for _ in range(waves))
    as_floats = lambda values: tuple(float(x) for x in values)  # noqa: E731 (float32 stays float32)
    return Ellipsoid(as_floats(centre), as_floats(semi_axes), float(angle),
                     tuple(as_floats(b) for b in bumps))


def _bounding_slices(canvas: Canvas, shape: Ellipsoid, margin: float = 0.25
                     ) -> Tuple[slice, slice, slice]:
    """Index box (z, y, x) that surely holds the shape: its anatomy-space box, grown by
    `margin` semi-axes for the surface waves and by the warp's bound, mapped to the image."""
    n_z, n_y, n_x = canvas.label.shape
    cu, cv, cw = shape.centre
    reach = max(shape.semi_axes[:2]) * (1 + margin) + canvas.warp
    reach_w = shape.semi_axes[2] * (1 + margin) + canvas.warp
    corners = np.array([canvas.to_image(cu + su * reach, cv + sv * reach, cw + sw * reach_w)
                        for su in (-1, 1) for sv in (-1, 1) for sw in (-1, 1)])
    to_index = ((n_z - 1), (n_y - 1) / 2, (n_x - 1) / 2)
    lows = (corners[:, 2].min() * to_index[0], (corners[:, 1].min() + 1) * to_index[1],
            (corners[:, 0].min() + 1) * to_index[2])
    highs = (corners[:, 2].max() * to_index[0], (corners[:, 1].max() + 1) * to_index[1],
             (corners[:, 0].max() + 1) * to_index[2])
    return tuple(slice(min(max(int(np.floor(lo)), 0), n), min(max(int(np.ceil(hi)) + 1, 0), n))
                 for lo, hi, n in zip(lows, highs, (n_z, n_y, n_x)))


def inside(canvas: Canvas, shape: Ellipsoid) -> Tuple[Tuple[slice, ...], np.ndarray]:
    """(index box, boolean mask of the shape within that box)."""
    box = _bounding_slices(canvas, shape)
    return box, shape.distance(canvas.u[box], canvas.v[box], canvas.w[box]) < 1.0


def paint(canvas: Canvas, box, mask: np.ndarray, intensity: float, label: Optional[int],
          texture: float) -> None:
    """Draw a region of `box`: later paint covers earlier paint. `label` is a SABS id,
    UNLABELLED (the voxels become background) or KEEP_LABELS (detail inside an organ);
    `texture` scales the subject's texture field there."""
    canvas.intensity[box][mask] = intensity
    canvas.texture[box][mask] = texture
    if label is UNLABELLED:
        canvas.label[box][mask] = 0
    elif label != KEEP_LABELS:
        canvas.label[box][mask] = label


def draw(canvas: Canvas, shape: Ellipsoid, intensity: float, label: Optional[int],
         texture: float) -> np.ndarray:
    box, mask = inside(canvas, shape)
    paint(canvas, box, mask, intensity, label, texture)
    return mask


# ----------------------------------------------------------------------------- the subject

def smooth_deformation(rng: np.random.Generator, u, v, w, amplitude: float,
                       waves: int = 3) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deformed coordinates: each axis moved by a sum of random low-frequency waves (about
    one cycle over the field of view), smooth everywhere and of size about `amplitude`."""
    out = []
    for axis, base in enumerate((u, v, w)):
        scale = amplitude * (0.6 if axis == 2 else 1.0) / np.sqrt(waves)
        moved = base.astype(np.float32)
        for _ in range(waves):
            frequencies = rng.uniform(-1, 1, 3) * np.array([np.pi, np.pi, 2 * np.pi])
            fu, fv, fw = (float(f) for f in frequencies)
            moved = moved + np.float32(scale * rng.uniform(0.5, 1)) * np.sin(
                fu * u + fv * v + fw * w + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        out.append(moved)
    return tuple(out)


def new_canvas(rng: np.random.Generator, n_slices: int, size: int, warp: float = 0.05
               ) -> Canvas:
    """An empty canvas with this subject's pose and smooth warp."""
    w, v, u = np.meshgrid(np.linspace(0, 1, n_slices, dtype=np.float32),
                          np.linspace(-1, 1, size, dtype=np.float32),
                          np.linspace(-1, 1, size, dtype=np.float32), indexing="ij", sparse=True)
    shape = (n_slices, size, size)
    canvas = Canvas(np.zeros(shape, np.float32), np.zeros(shape, np.uint8),
                    np.zeros(shape, np.float32), u, v, w,
                    angle=rng.uniform(-0.12, 0.12), scale=rng.uniform(0.92, 1.08),
                    shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04),
                           rng.uniform(-0.04, 0.04)),
                    w_scale=rng.uniform(0.95, 1.08), warp=warp * np.sqrt(3))
    uu, vv, ww = np.broadcast_arrays(*canvas.to_anatomy(u, v, w))
    canvas.u, canvas.v, canvas.w = smooth_deformation(rng, uu, vv, ww, amplitude=warp)
    return canvas


def jitter(rng: np.random.Generator, values, spread: float):
    """Multiply each value by a factor in [1 - spread, 1 + spread]."""
    return tuple(float(x) * rng.uniform(1 - spread, 1 + spread) for x in values)


def draw_body(rng, canvas: Canvas) -> Ellipsoid:
    """Body outline with subcutaneous fat, the abdominal wall muscle, and the visceral fat
    that fills the cavity between organs. Returns the body's shape."""
    a, b = rng.uniform(0.80, 0.92), rng.uniform(0.58, 0.70)
    body = lumpy(rng, (0.0, 0.04, 0.5), (a, b, 5.0), roughness=0.03)
    fat = rng.uniform(15, 30)
    draw(canvas, body, fat, UNLABELLED, texture=0.3)
    wall = lumpy(rng, (0.0, 0.04, 0.5), (a * 0.92, b * 0.90, 5.0), roughness=0.03)
    draw(canvas, wall, rng.uniform(100, 130), UNLABELLED, texture=0.6)
    cavity = lumpy(rng, (0.0, 0.05, 0.5), (a * 0.88, b * 0.85, 5.0), roughness=0.03)
    draw(canvas, cavity, rng.uniform(25, 45), UNLABELLED, texture=1.0)
    return body


def draw_muscles(rng, canvas: Canvas) -> None:
    """Paraspinal muscles on every slice, psoas muscles growing towards the inferior end:
    unlabelled soft tissue with the organs' intensities."""
    muscle = rng.uniform(100, 135)
    for side in (-1, 1):
        draw(canvas, lumpy(rng, (side * 0.2, 0.56, 0.5), (0.15, 0.10, 5.0), roughness=0.04),
             muscle, UNLABELLED, texture=0.8)
        draw(canvas, lumpy(rng, (side * 0.17, 0.36, 0.0), (0.09, 0.08, 0.55), roughness=0.05),
             muscle * rng.uniform(0.95, 1.05), UNLABELLED, texture=0.8)


def draw_bowel(rng, canvas: Canvas) -> None:
    """Unlabelled bowel loops in the anterior and inferior cavity, some holding gas."""
    for _ in range(int(rng.integers(5, 9))):
        centre = (rng.uniform(-0.5, 0.5), rng.uniform(-0.45, 0.1), rng.uniform(0.0, 0.55))
        loop = lumpy(rng, centre, (rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.12),
                                   rng.uniform(0.08, 0.2)), rng.uniform(0, np.pi), roughness=0.1)
        mask = draw(canvas, loop, rng.uniform(70, 150), UNLABELLED, texture=1.0)
        if rng.random() < 0.4 and mask.any():
            gas = Ellipsoid(loop.centre, tuple(s * 0.5 for s in loop.semi_axes), loop.angle)
            draw(canvas, gas, rng.uniform(0, 10), UNLABELLED, texture=0.1)


def draw_stomach(rng, canvas: Canvas) -> None:
    """Stomach (labelled as a whole): a soft-tissue wall, darker contents, an anterior gas cap."""
    stomach = lumpy(rng, jitter(rng, (0.28, -0.2, 0.72), 0.1),
                    jitter(rng, (0.24, 0.16, 0.18), 0.12), rng.uniform(-0.5, 0.1), roughness=0.1)
    draw(canvas, stomach, rng.uniform(95, 130), STOMACH, texture=0.8)   # the wall
    lumen = Ellipsoid(stomach.centre, tuple(s * 0.75 for s in stomach.semi_axes), stomach.angle,
                      stomach.bumps)
    draw(canvas, lumen, rng.uniform(55, 100), KEEP_LABELS, texture=1.2)          # contents
    cu, cv, cw = stomach.centre
    su, sv, sw = stomach.semi_axes
    gas = Ellipsoid((cu, cv - 0.5 * sv, cw), (su * 0.5, sv * 0.35, sw * 0.5), stomach.angle)
    draw(canvas, gas, rng.uniform(0, 10), KEEP_LABELS, texture=0.1)


def draw_liver(rng, canvas: Canvas) -> None:
    """A right lobe and a left lobe reaching over the midline, with bright vessels inside
    (labelled liver, as in SABS)."""
    liver = rng.uniform(110, 145)
    right = lumpy(rng, jitter(rng, (-0.42, -0.02, 0.72), 0.08),
                  jitter(rng, (0.34, 0.42, 0.30), 0.1), rng.uniform(-0.2, 0.2), roughness=0.1)
    left = lumpy(rng, jitter(rng, (-0.05, -0.32, 0.80), 0.1), jitter(rng, (0.30, 0.15, 0.18), 0.12),
                 rng.uniform(-0.3, 0.2), roughness=0.1)
    box_r, mask_r = inside(canvas, right)
    box_l, mask_l = inside(canvas, left)
    paint(canvas, box_r, mask_r, liver, LIVER, texture=1.0)
    paint(canvas, box_l, mask_l, liver * rng.uniform(0.97, 1.03), LIVER, texture=1.0)
    vessel = liver + rng.uniform(20, 45)
    for _ in range(3):
        cu, cv, cw = right.centre
        radii = rng.uniform(0.02, 0.035, 2)
        tube = Ellipsoid((cu + rng.uniform(-0.15, 0.15), cv + rng.uniform(-0.2, 0.2), cw),
                         (float(radii[0]), float(radii[1]), right.semi_axes[2] * 0.8))
        box_t, mask_t = inside(canvas, tube)
        mask_t &= canvas.label[box_t] == LIVER
        paint(canvas, box_t, mask_t, vessel, KEEP_LABELS, texture=0.3)


def draw_spleen(rng, canvas: Canvas) -> None:
    """Spleen: posterolateral on the image's right, at the liver's height."""
    spleen = lumpy(rng, jitter(rng, (0.55, 0.16, 0.70), 0.08), jitter(rng, (0.16, 0.23, 0.17), 0.1),
                   rng.uniform(-0.6, -0.2), roughness=0.1)
    draw(canvas, spleen, rng.uniform(105, 145), SPLEEN, texture=1.0)


def draw_kidneys(rng, canvas: Canvas) -> None:
    """Bean-shaped kidneys (a notch at the hilum): bright cortex, darker medulla and sinus."""
    cortex = rng.uniform(130, 175)
    for side, label in ((-1, RIGHT_KIDNEY), (1, LEFT_KIDNEY)):
        centre = jitter(rng, (side * 0.36, 0.38, 0.36 + 0.04 * (side > 0)), 0.08)
        kidney = lumpy(rng, centre, jitter(rng, (0.15, 0.20, 0.19), 0.08),
                       side * rng.uniform(0.2, 0.5), roughness=0.06)
        box, mask = inside(canvas, kidney)
        hilum = Ellipsoid((centre[0] - side * 0.13, centre[1] - 0.02, centre[2]), (0.05, 0.06, 0.1))
        mask &= hilum.distance(canvas.u[box], canvas.v[box], canvas.w[box]) >= 1
        paint(canvas, box, mask, cortex * rng.uniform(0.95, 1.05), label, texture=0.8)
        core = Ellipsoid(kidney.centre, tuple(s * 0.5 for s in kidney.semi_axes), kidney.angle)
        core_mask = (core.distance(canvas.u[box], canvas.v[box], canvas.w[box]) < 1) & mask
        paint(canvas, box, core_mask, rng.uniform(90, 125), KEEP_LABELS, texture=0.8)


def draw_vessels_and_bones(rng, canvas: Canvas, body: Ellipsoid) -> None:
    """Aorta and IVC (labelled), vertebral body, spinal canal and ribs (unlabelled)."""
    contrast = rng.uniform(150, 215)
    aorta = lumpy(rng, (0.08 + rng.uniform(-0.03, 0.03), 0.24, 0.5), (0.07, 0.07, 5.0),
                  roughness=0.02)
    draw(canvas, aorta, contrast, AORTA, texture=0.3)
    ivc = lumpy(rng, (-0.14 + rng.uniform(-0.03, 0.03), 0.18, 0.5), (0.07, 0.055, 5.0),
                roughness=0.04)
    draw(canvas, ivc, contrast * rng.uniform(0.7, 0.9), IVC, texture=0.4)
    vertebra = lumpy(rng, (0.0, 0.44, 0.5), (0.12, 0.11, 5.0), roughness=0.02)
    draw(canvas, vertebra, rng.uniform(230, 255), UNLABELLED, texture=0.5)
    cancellous = Ellipsoid(vertebra.centre, (0.09, 0.08, 5.0))
    draw(canvas, cancellous, rng.uniform(150, 200), UNLABELLED, texture=1.2)
    canal = Ellipsoid((0.0, 0.61, 0.5), (0.05, 0.045, 5.0))
    draw(canvas, canal, rng.uniform(90, 115), UNLABELLED, texture=0.3)
    draw_ribs(rng, canvas, body)


def draw_ribs(rng, canvas: Canvas, body: Ellipsoid) -> None:
    """Small bright cross-sections inside the abdominal wall on the upper slices, from the
    anterolateral to the posterolateral body wall on both sides; each one's position along
    the wall drifts with the slice, as ribs run obliquely."""
    n_z = canvas.label.shape[0]
    a, b = body.semi_axes[0] * 0.9, body.semi_axes[1] * 0.9
    bone = rng.uniform(200, 255)
    for phi0 in np.linspace(-1.2, 0.9, 6):   # 0: lateral, negative: anterior
        for side in (-1, 1):
            drift = rng.uniform(0.3, 0.6)
            for z in range(int(n_z * rng.uniform(0.35, 0.5)), n_z):
                w = z / (n_z - 1)
                phi = phi0 + drift * (w - 0.5)
                centre = (side * a * np.cos(phi), body.centre[1] + b * np.sin(phi), w)
                rib = Ellipsoid(centre, (0.035, 0.035, 0.5 / (n_z - 1)))
                draw(canvas, rib, bone, UNLABELLED, texture=0.4)


def render(rng, canvas: Canvas) -> np.ndarray:
    """Partial-volume blur of the drawn intensities, then texture and noise inside the body;
    air stays 0, as after CT windowing."""
    body = canvas.intensity > 0
    image = ndimage.gaussian_filter(canvas.intensity, sigma=(0.3, 0.7, 0.7))
    texture = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32),
                                      sigma=(0.6, 1.3, 1.3))
    texture *= np.float32(rng.uniform(10, 20) / texture.std())
    noise = rng.standard_normal(image.shape).astype(np.float32) * np.float32(rng.uniform(4, 9))
    image += (canvas.texture * texture + noise) * body
    return np.clip(image, 0, 255).astype(np.float32)


def generate_subject(seed: int, index: int, size: int = 129, n_slices: int = 28
                     ) -> Tuple[np.ndarray, np.ndarray, Geometry]:
    """One subject: (image float32, label uint8), both (n_slices, size, size), and its
    geometry. Deterministic in (seed, index)."""
    if size < 16 or n_slices < 4:
        raise ValueError(f"size must be >= 16 and n_slices >= 4, got size={size}, "
                         f"n_slices={n_slices}")
    rng = np.random.default_rng([seed, index])
    canvas = new_canvas(rng, n_slices, size)
    body = draw_body(rng, canvas)
    draw_muscles(rng, canvas)
    draw_bowel(rng, canvas)
    draw_stomach(rng, canvas)
    draw_liver(rng, canvas)
    draw_spleen(rng, canvas)
    draw_kidneys(rng, canvas)
    draw_vessels_and_bones(rng, canvas, body)
    image = render(rng, canvas)
    # Header spacing like pre-processed SABS: a 448-pixel crop of 0.65-0.85 mm pixels
    # spread over `size` pixels, and an upper abdomen of 170-220 mm over the slices.
    in_plane = rng.uniform(0.65, 0.85) * 448 / size
    spacing = (in_plane, in_plane, rng.uniform(170, 220) / n_slices)
    origin = (-in_plane * size / 2, -in_plane * size / 2, rng.uniform(-400, -300))
    geometry = Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image, canvas.label, geometry


# ----------------------------------------------------------------------------- the dataset

def _check_manifest(out_dir: str, settings: Dict, overwrite: bool) -> None:
    """Refuse to mix subjects made with other settings into an existing folder."""
    path = os.path.join(out_dir, MANIFEST)
    if overwrite or not os.path.isfile(path):
        return
    with open(path) as f:
        previous = json.load(f)
    if {k: previous.get(k) for k in settings if k != "n_subjects"} != \
            {k: v for k, v in settings.items() if k != "n_subjects"}:
        raise ValueError(f"{out_dir} holds a synthetic dataset made with other settings "
                         f"({previous}); pass overwrite=True (--overwrite) or another folder")


def _write_manifest(out_dir: str, settings: Dict) -> None:
    atomic_write_json(settings, os.path.join(out_dir, MANIFEST))


def generate_dataset(out_dir: str, n_subjects: int = 30, size: int = 129, n_slices: int = 28,
                     seed: int = 0, supervoxels: bool = False, supervoxel_min_size: int = 1000,
                     overwrite: bool = False, progress: bool = True) -> List[str]:
    """Write image_<i>.nii.gz and label_<i>.nii.gz for i = 0..n_subjects-1 into `out_dir`
    (and, with `supervoxels`, supervoxels_<min size>/superpix-MIDDLE_<i>.nii.gz).

    Subjects already present are kept unless `overwrite`; a folder generated with other
    settings (seed, size, slices) is refused unless `overwrite`.
    Returns:
        the paths of the dataset's files (image, label per subject, then supervoxels).
    """
    for name, value, low in (("n_subjects", n_subjects, 1), ("size", size, 16),
                             ("n_slices", n_slices, 4),
                             ("supervoxel_min_size", supervoxel_min_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    settings = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "size": int(size),
                "n_slices": int(n_slices), "n_subjects": int(n_subjects)}
    os.makedirs(out_dir, exist_ok=True)
    _check_manifest(out_dir, settings, overwrite)
    paths = []
    for index in tqdm(range(n_subjects), desc="synthetic subjects", unit="subj",
                      disable=not progress):
        image_path = os.path.join(out_dir, image_name(index))
        label_path = os.path.join(out_dir, label_name(index))
        if overwrite or not (os.path.isfile(image_path) and os.path.isfile(label_path)):
            image, label, geometry = generate_subject(seed, index, size, n_slices)
            write_volume(label, geometry, label_path)
            write_volume(image, geometry, image_path)
        paths += [image_path, label_path]
    _write_manifest(out_dir, settings)
    if supervoxels:
        paths += _make_supervoxels(out_dir, n_subjects, supervoxel_min_size, overwrite)
    return paths


def _make_supervoxels(out_dir: str, n_subjects: int, min_size: int, overwrite: bool) -> List[str]:
    # Imported here: the compiled extension is only needed when supervoxels are requested.
    from fafnet.supervoxels.generate import generate_supervoxels
    generate_supervoxels(out_dir, min_size, overwrite=overwrite)
    return [os.path.join(out_dir, supervoxel_folder_name(min_size), supervoxel_name(i)) for i in range(n_subjects)]
