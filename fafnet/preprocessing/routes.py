"""Each dataset's pre-processing route applied to one scan in memory (docs/protocol.md
sections 12 and 14), for scans that do not come through a pre-processing CLI: segment.py
brings a new scan to the data a checkpoint was trained on with the same code the CLIs run.

- SABS: `fafnet.preprocessing.sabs.preprocess_sabs_arrays` (CT window, 32-pixel border crop,
  in-plane resampling by 1.75).
- CHAOST2: `fafnet.preprocessing.chaost2.preprocess_chaos_arrays`: the row flip of its CLI for a
  DICOM series (which reproduces the dcm2nii layout the literature's data has), none for a
  NIfTI file (taken to be in that layout already), then the MRI route.
- CMR, Prostate_MRI: `preprocess_mr` with the dataset's target spacing.
- SYNTHETIC: no route (the phantom is generated pre-processed).

`choose_preprocessing` decides between the route and none ("auto": none when the scan already
has the route's output grid), and `scan_warnings` says how a scan differs from the training
data (modality, spacing).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fafnet.preprocessing import chaost2 as chaos
from fafnet.preprocessing import cmr
from fafnet.io.nifti import Geometry
from fafnet.preprocessing.common import DEFAULT_MR_ARITHMETIC, ProcessedVolume, preprocess_mr
from fafnet.preprocessing import prostate_mri as prostate
from fafnet.preprocessing import sabs
from fafnet.datasets.specs import DatasetSpec

PREPROCESS_CHOICES = ("auto", "route", "none")
# "auto" takes a scan for pre-processed when its spacing is within this relative difference
# of the route's output spacing on every axis (the community's CMR files store 7.99 mm as
# 7.9899997 and 1.25 as 1.2499999).
SPACING_TOLERANCE = 0.05
# A scan whose spacing differs from the training data's typical spacing by more than this
# factor on an axis gets a warning.
SPACING_WARNING_FACTOR = 2.0
# CT holds air at about -1000 HU around the body; magnitude MRI is non-negative. A scan whose
# 1st intensity percentile lies below this value looks like CT.
CT_LIKE_PERCENTILE, CT_LIKE_BELOW = 1.0, -200.0
_MR_TARGETS = {"CHAOST2": chaos.TARGET_SPACING, "CMR": cmr.TARGET_SPACING,
               "Prostate_MRI": prostate.TARGET_SPACING}


@dataclass(frozen=True)
class Preprocessing:
    """What is done to one scan before the experiments' in-plane resampling and z-score."""
    requested: str                     # "auto", "route" or "none"
    applied: str                       # "route" or "none"
    reason: str
    route: Optional[Dict] = None       # {"name", "parameters"} when the route runs

    def record(self) -> Dict:
        return {"requested": self.requested, "applied": self.applied, "reason": self.reason,
                "route": self.route}


def has_route(dataset: str) -> bool:
    return dataset == "SABS" or dataset in _MR_TARGETS


def route_record(dataset: str, arithmetic: str, row_flip: bool) -> Dict:
    """The route's name and parameters, as the CLIs record them in their manifests."""
    if dataset == "SABS":
        route = sabs.sabs_route()
    elif dataset == "CHAOST2":
        route = chaos.chaos_route(arithmetic)
    else:
        route = {"CMR": cmr.cmr_route, "Prostate_MRI": prostate.prostate_route}[dataset](arithmetic)
    parameters = dict(route.parameters)
    if dataset == "CHAOST2":  # the CLI flips every (DICOM) series; a NIfTI file is not flipped
        parameters["row_flip"] = row_flip
    return {"name": route.name, "parameters": parameters}


def apply_route(dataset: str, image: np.ndarray, geometry: Geometry, label: Optional[np.ndarray] = None,
                arithmetic: str = DEFAULT_MR_ARITHMETIC, row_flip: bool = False,
                path: str = "scan") -> ProcessedVolume:
    """The dataset's route on a raw (z, y, x) `image` (its own pixel type) and optionally its
    label map on the same grid; `row_flip` applies to CHAOST2 only (see the module docstring).
    The image comes back as float32, as the CLIs write it and the experiments read it."""
    if dataset == "SABS":
        sabs.check_croppable(image.shape, path)
        volume = sabs.preprocess_sabs_arrays(image, label, geometry)
    elif dataset == "CHAOST2":
        volume = chaos.preprocess_chaos_arrays(image, label, geometry, arithmetic, row_flip)
    elif dataset in _MR_TARGETS:
        volume = preprocess_mr(image, label, geometry, _MR_TARGETS[dataset], arithmetic=arithmetic)
    else:
        raise ValueError(f"{dataset} has no pre-processing route")
    return ProcessedVolume(volume.image.astype(np.float32, copy=False), volume.label, volume.geometry,
                           volume.notes)


def route_output_difference(spec: DatasetSpec, array: np.ndarray, geometry: Geometry) -> Optional[str]:
    """None when a (z, y, x) scan already looks like the route's output, else what differs:
    the in-plane size (the dataset's image size) and, for the MRI routes, the target spacing
    within `SPACING_TOLERANCE`; for SABS, whose output spacing follows the raw spacing, the
    CT window's value range [0, 255] instead (raw CT holds negative HU)."""
    if tuple(array.shape[1:]) != tuple(spec.image_size):
        return f"in-plane size {tuple(array.shape[1:])} is not the route's {tuple(spec.image_size)}"
    if spec.name in _MR_TARGETS:
        target = np.asarray(_MR_TARGETS[spec.name], dtype=np.float64)
        spacing = np.asarray(geometry.spacing, dtype=np.float64)
        if np.any(np.abs(spacing - target) > SPACING_TOLERANCE * target):
            return (f"spacing {_mm(spacing)} is not the route's {_mm(target)} (x, y, z) within "
                    f"{SPACING_TOLERANCE:.0%}")
        return None
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 255.0:
        return f"values [{low:g}, {high:g}] lie outside the CT window's output range [0, 255]"
    return None


def choose_preprocessing(requested: str, spec: DatasetSpec, array: np.ndarray, geometry: Geometry,
                         arithmetic: str, row_flip: bool) -> Preprocessing:
    """The route or none for one scan: "route" and "none" as asked, "auto" none when the scan
    has the route's output grid (`route_output_difference`), else the route. A dataset without
    a route (the phantom) always gets none."""
    if requested not in PREPROCESS_CHOICES:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {requested!r}")
    if not has_route(spec.name):
        return Preprocessing(requested, "none", f"{spec.name} has no pre-processing route")
    if requested == "none":
        return Preprocessing(requested, "none", "asked for (--preprocess none)")
    route = route_record(spec.name, arithmetic, row_flip)
    if requested == "route":
        return Preprocessing(requested, "route", "asked for (--preprocess route)", route)
    difference = route_output_difference(spec, array, geometry)
    if difference is None:
        return Preprocessing(requested, "none", f"the scan already has the {spec.name} route's output grid")
    return Preprocessing(requested, "route", difference, route)


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ") mm"


def typical_spacing(spec: DatasetSpec, applied: str) -> Optional[Tuple[float, ...]]:
    """The spacing (x, y, z) a scan given to the route (raw) or taken as pre-processed
    (the route's output) typically has for `spec`; None where no check applies."""
    if spec.raw_spacing is None:
        return None
    if applied == "route":
        return tuple(spec.raw_spacing)
    if spec.name in _MR_TARGETS:
        return tuple(_MR_TARGETS[spec.name])
    sx, sy, sz = spec.raw_spacing
    return (sx * sabs.SPACING_FACTOR, sy * sabs.SPACING_FACTOR, sz)


def spacing_warnings(spec: DatasetSpec, geometry: Geometry, applied: str) -> List[str]:
    """One line per axis whose spacing is more than SPACING_WARNING_FACTOR from the typical."""
    typical = typical_spacing(spec, applied)
    if typical is None:
        return []
    lines = []
    for axis, value, usual in zip("xyz", geometry.spacing, typical):
        ratio = value / usual
        if ratio > SPACING_WARNING_FACTOR or ratio < 1 / SPACING_WARNING_FACTOR:
            lines.append(f"spacing along {axis} is {value:.3g} mm, {max(ratio, 1 / ratio):.1f}x "
                         f"{'coarser' if ratio > 1 else 'finer'} than the {usual:.3g} mm typical of "
                         f"{'raw' if applied == 'route' else 'pre-processed'} {spec.name} scans")
    return lines


def modality_warnings(spec: DatasetSpec, array: np.ndarray, applied: str,
                      dicom_modality: Optional[str]) -> List[str]:
    """A line when the DICOM Modality tag, or (for a raw scan) the intensities, say another
    modality than the training data's."""
    if spec.modality is None:
        return []
    lines = []
    if dicom_modality and dicom_modality.upper() != spec.modality:
        lines.append(f"its DICOM Modality tag is {dicom_modality}, but the checkpoint was trained on "
                     f"{spec.modality} ({spec.name})")
    if applied == "route":  # pre-processed intensities no longer tell CT from MR
        sample = array[::2, ::4, ::4]
        low = float(np.percentile(sample, CT_LIKE_PERCENTILE))
        ct_like = low < CT_LIKE_BELOW
        if ct_like != (spec.modality == "CT"):
            lines.append(f"its intensities look {'like' if ct_like else 'unlike'} CT (1st percentile "
                         f"{low:.4g}; CT holds air near -1000 HU), but the checkpoint was trained on "
                         f"{spec.modality} ({spec.name})")
    return lines


def scan_warnings(spec: DatasetSpec, array: np.ndarray, geometry: Geometry, applied: str,
                  dicom_modality: Optional[str] = None) -> List[str]:
    """How a scan differs from the data the checkpoint was trained on (modality, spacing)."""
    return modality_warnings(spec, array, applied, dicom_modality) + spacing_warnings(spec, geometry, applied)


def check_route_output(dataset: str, shape: Sequence[int], image_size: Sequence[int],
                       resample_in_plane: Optional[Sequence[int]], path: str, checkpoint: str,
                       applied: str) -> None:
    """Refuse a pre-processed scan that the checkpoint's grid cannot take: without the
    experiments' in-plane resampling, its in-plane size must be the checkpoint's image size.
    `applied` ("route" or "none") is named in the message."""
    if resample_in_plane is None and tuple(shape[1:]) != tuple(image_size):
        raise ValueError(f"{path}: after pre-processing ({applied}) its in-plane size is {tuple(shape[1:])}, but "
                         f"checkpoint {checkpoint} ({dataset}) takes {tuple(image_size)} and was trained "
                         "without resample_in_plane, so nothing brings the scan to its grid")
