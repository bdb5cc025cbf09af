"""The on-disk layout of a pre-processed dataset folder: which files are its volumes, in which
order, and where their pseudo-labels are (docs/protocol.md sections 11, 13 and 16).

    <data_dir>/image_<i>.nii.gz, <data_dir>/label_<i>.nii.gz      i: any non-negative integers
    <data_dir>/supervoxels_<N>/superpix-MIDDLE_<i>.nii.gz          (this project's place)
    <data_dir>/../supervoxels_<N>/superpix-MIDDLE_<i>.nii.gz       (the release's place)
    <data_dir>/superpixels_<N>/superpix-MIDDLE_<i>.nii.gz          (SSL-ALPNet's 2D superpixels,
    <data_dir>/../superpixels_<N>/superpix-MIDDLE_<i>.nii.gz        min size N; same two places)

3D supervoxels and 2D superpixels share the file name and differ by their folder; both are
found with the same rules (`pseudo_label_dir`).

The numbers i need not start at 0 nor be contiguous: the pre-processed data the FSMIS
community distributes is numbered from 1 (CMR: 1..35) and with gaps (CHAOS-T2: 1, 2, 3, 5, 8,
...). As in the release's dataloaders, volumes are ordered by that number and everything the
protocol names (folds, the support volume, query volumes) is a *position* in that order; this
project's own pre-processing writes 0..N-1, where position and number coincide. `.nii` files
are read like `.nii.gz`.

Scanning is strict, because a file the loader does not see shifts every fold after it: two
files for one volume (image_5.nii and image_5.nii.gz, image_05 and image_5), an image without
its label or a label without its image, a NIfTI file named like a volume that cannot be
read as one (image_5_old.nii.gz, image_5.NII.GZ: suffixes are lower case) and a folder named
like a volume (image_5.nii.gz/) are errors naming the files. Other files are ignored and
listed (`ignored`), except the class maps and manifests that belong in such a folder.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

_SUFFIX = r"(\.nii\.gz|\.nii)"
_VOLUME_NAME = re.compile(rf"^(image|label)_(\d+){_SUFFIX}$")
_SUPERVOXEL_NAME = re.compile(rf"^superpix-MIDDLE_(\d+){_SUFFIX}$")
# Files that belong in a community dataset folder and are not volumes: ALPNet's class-to-slice
# maps and the manifests of this project's pre-processing and synthetic generator.
# A NIfTI name that starts like a numbered volume but is not one (image_5_old.nii.gz,
# Image_5.nii.gz): the user may have meant it as a volume, so it is an error, not ignored.
_LOOKS_NUMBERED = re.compile(r"^(image|label)_?\d", re.IGNORECASE)
# A NIfTI suffix in any case (image_5.NII.GZ): the loader reads lower-case suffixes only.
_NIFTI_ANY_CASE = re.compile(rf"{_SUFFIX}$", re.IGNORECASE)
_EXPECTED_EXTRAS = re.compile(r"^(classmap_.*\.json|.*manifest\.json)$")


# The manifests beside pre-processed data (fafnet/preprocessing/manifest.py, and the synthetic
# generator's settings).
PREPROCESSING_MANIFEST_NAME = "preprocessing_manifest.json"
SYNTHETIC_MANIFEST_NAME = "synthetic_manifest.json"
# Written inside superpixels_<N>/ beside the superpixel files (fafnet/supervoxels/superpixels.py).
SUPERPIXEL_MANIFEST_NAME = "superpixel_manifest.json"

# The two kinds of pseudo-label folder: <kind>_<min size>/superpix-MIDDLE_<i>.nii.gz.
SUPERVOXELS, SUPERPIXELS = "supervoxels", "superpixels"
PSEUDO_LABEL_KINDS = (SUPERVOXELS, SUPERPIXELS)
# What the error for a missing folder suggests, per kind.
_HOW_TO_MAKE = {
    SUPERVOXELS: "compute supervoxels with min size {n} first, or use_gt=True",
    SUPERPIXELS: "compute superpixels with min size {n} first (fafnet-preprocess superpixels "
                 "--data-dir {data_dir} --min-size {n}), or pseudo_labels='supervoxels'",
}


def image_name(number: int) -> str:
    return f"image_{number}.nii.gz"


def label_name(number: int) -> str:
    return f"label_{number}.nii.gz"


def pseudo_label_folder_name(kind: str, min_size: int) -> str:
    """'supervoxels_5000', 'superpixels_400'."""
    if kind not in PSEUDO_LABEL_KINDS:
        raise ValueError(f"pseudo-label kind must be one of {list(PSEUDO_LABEL_KINDS)}, got {kind!r}")
    return f"{kind}_{min_size}"


def supervoxel_folder_name(min_size: int) -> str:
    return pseudo_label_folder_name(SUPERVOXELS, min_size)


def superpixel_folder_name(min_size: int) -> str:
    return pseudo_label_folder_name(SUPERPIXELS, min_size)


def supervoxel_name(number: int) -> str:
    return f"superpix-MIDDLE_{number}.nii.gz"


def superpixel_name(number: int) -> str:
    """The file name of a volume's superpixels (the same as its supervoxels': the folder differs)."""
    return supervoxel_name(number)


@dataclass(frozen=True)
class VolumeFiles:
    """One volume of a dataset folder."""
    position: int      # its place in the order by number: folds and supp_idx count these
    number: int        # the i of image_<i>
    image: str         # path of image_<i>.nii[.gz]
    label: Optional[str]   # path of label_<i>.nii[.gz] (None only for a layout of images alone)

    @property
    def name(self) -> str:
        """The image's file name, as results name the volume ("image_12.nii.gz")."""
        return os.path.basename(self.image)


def _numbered_files(folder: str, pattern: "re.Pattern", what: str) -> Dict[Tuple[str, int], str]:
    """{(kind, number): path} of the files in `folder` matching `pattern` (groups: kind and
    number, or number alone); two files for one key are an error naming both."""
    found: Dict[Tuple[str, int], str] = {}
    for name in sorted(os.listdir(folder)):
        match = pattern.match(name)
        if not match:
            continue
        groups = match.groups()[:-1]
        key = (groups[0], int(groups[1])) if len(groups) == 2 else ("", int(groups[0]))
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, not a {what} file; rename or move it")
        if key in found:
            raise ValueError(f"two {what} files for volume number {key[1]} in {folder}: "
                             f"{os.path.basename(found[key])} and {name}; keep one")
        found[key] = path
    return found


class DatasetLayout:
    """The volumes of one dataset folder and where their supervoxels are.

    Args:
        data_dir: the folder holding image_<i> / label_<i> (callers check the number of
            volumes with `check_count`).
        require_labels: every image needs its label and every label its image (False: the
            images alone are the volumes, for tools that read images only).
    Attributes:
        volumes: `VolumeFiles` by position.
        ignored: (file name, reason) of the files in `data_dir` that are not volumes.
    """

    def __init__(self, data_dir: str, require_labels: bool = True):
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data folder not found: {data_dir}")
        self.data_dir = data_dir
        files = _numbered_files(data_dir, _VOLUME_NAME, "volume")
        self._check_names(files)
        images = {n: p for (kind, n), p in files.items() if kind == "image"}
        labels = {n: p for (kind, n), p in files.items() if kind == "label"}
        if not images and not labels:
            raise FileNotFoundError(f"no image_<i>.nii.gz files in {data_dir}")
        for number in sorted(images.keys() - labels.keys()) if require_labels else ():
            raise FileNotFoundError(f"{images[number]} has no label file "
                                    f"{os.path.join(data_dir, label_name(number))}")
        for number in sorted(labels.keys() - images.keys()) if require_labels else ():
            raise FileNotFoundError(f"{labels[number]} has no image file "
                                    f"{os.path.join(data_dir, image_name(number))}")
        self.volumes: List[VolumeFiles] = [
            VolumeFiles(position, number, images[number], labels.get(number))
            for position, number in enumerate(sorted(images))]

    def _check_names(self, files: Dict) -> None:
        """Refuse NIfTI files named like volumes that are not image_<i>/label_<i> (the
        reader would skip them and shift the folds); list other files as ignored."""
        known = set(map(os.path.basename, files.values()))
        self.ignored: List[Tuple[str, str]] = []
        for name in sorted(os.listdir(self.data_dir)):
            path = os.path.join(self.data_dir, name)
            if name in known or os.path.isdir(path) or name.startswith(".") or _EXPECTED_EXTRAS.match(name):
                continue
            if _LOOKS_NUMBERED.match(name) and _NIFTI_ANY_CASE.search(name):
                raise ValueError(f"{path}: a volume file must be named image_<i>.nii.gz or "
                                 f"label_<i>.nii.gz (lower case, i an integer); rename or move it, since a "
                                 f"volume the loader cannot see would shift every fold after it")
            self.ignored.append((name, "not a volume file (image_<i> / label_<i>.nii[.gz])"))

    # ------------------------------------------------------------------------- volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, position: int) -> VolumeFiles:
        return self.volumes[position]

    @property
    def numbers(self) -> List[int]:
        return [v.number for v in self.volumes]

    @property
    def numbering(self) -> str:
        """'0..N-1' for this project's layout, otherwise the numbers, shortened."""
        numbers = self.numbers
        if numbers == list(range(len(numbers))):
            return f"0..{len(numbers) - 1}"
        shown = ", ".join(map(str, numbers[:6])) + (", ..." if len(numbers) > 6 else "")
        return shown

    def check_count(self, expected: Optional[int], what: str) -> None:
        """Refuse a folder that does not hold `expected` volumes (`what` says where the count
        comes from, e.g. "n_volumes=5" or "SABS has 30"), naming the volumes concerned."""
        if expected is None or expected == len(self):
            return
        if expected < len(self):
            extra = [v.name for v in self.volumes[expected:]]
            raise ValueError(
                f"{self.data_dir} holds {len(self)} volumes but {what}: the folds would leave out "
                f"{', '.join(extra[:5])}{' and more' if len(extra) > 5 else ''}. Move the extra "
                f"volumes out, or set n_volumes={len(self)} to make folds for the volumes present")
        raise ValueError(f"{self.data_dir} holds {len(self)} volumes but {what}. If the folder is "
                         f"meant to hold {len(self)} (numbers {self.numbering}), set n_volumes={len(self)} "
                         f"to make folds for that count")

    # ------------------------------------------------------------------------- pseudo-labels

    def pseudo_label_folders(self, kind: str, min_size: int) -> Tuple[str, str]:
        """The two places <kind>_<min_size>/ may be: inside the data folder (this project's)
        and beside it (the release's, <data_root>/<kind>_<N>/)."""
        name = pseudo_label_folder_name(kind, min_size)
        parent = os.path.dirname(os.path.abspath(self.data_dir))
        return os.path.join(self.data_dir, name), os.path.join(parent, name)

    def pseudo_label_dir(self, kind: str, min_size: int) -> str:
        """The folder holding <kind>_<min_size>: exactly one of `pseudo_label_folders` must
        exist (both is an error: which one was meant cannot be guessed)."""
        inside, beside = self.pseudo_label_folders(kind, min_size)
        present = [d for d in (inside, beside) if os.path.isdir(d)]
        if len(present) == 2:
            raise ValueError(f"{kind} with min size {min_size} exist in two places, {inside} and "
                             f"{beside}; remove or rename one of them")
        if not present:
            hint = _HOW_TO_MAKE[kind].format(n=min_size, data_dir=self.data_dir)
            raise FileNotFoundError(f"{kind[:-1]} folder not found: neither {inside} nor {beside} exists "
                                    f"({hint})")
        return present[0]

    def pseudo_label_files(self, kind: str, min_size: int) -> Dict[int, str]:
        """{volume number: path} of the files in <kind>_<min_size>/."""
        folder = self.pseudo_label_dir(kind, min_size)
        return {n: p for (_, n), p in _numbered_files(folder, _SUPERVOXEL_NAME, kind[:-1]).items()}

    def pseudo_label_path(self, kind: str, volume: VolumeFiles, min_size: int,
                          files: Optional[Dict[int, str]] = None) -> str:
        """The <kind> file of `volume` (pass `files` from `pseudo_label_files` to look up many
        volumes with one folder scan); a missing file is an error naming it."""
        files = self.pseudo_label_files(kind, min_size) if files is None else files
        if volume.number not in files:
            folder = self.pseudo_label_dir(kind, min_size)
            raise FileNotFoundError(f"{kind[:-1]} file {os.path.join(folder, supervoxel_name(volume.number))} "
                                    f"of {volume.image} not found")
        return files[volume.number]

    # ------------------------------------------------------------------------- supervoxels

    def supervoxel_folders(self, min_size: int) -> Tuple[str, str]:
        """The two places supervoxels_<min_size>/ may be: inside the data folder (this
        project's) and beside it (the release's, <data_root>/supervoxels_<N>/)."""
        return self.pseudo_label_folders(SUPERVOXELS, min_size)

    def supervoxel_dir(self, min_size: int) -> str:
        """The folder holding supervoxels_<min_size>: exactly one of `supervoxel_folders` must
        exist (both is an error: which one was meant cannot be guessed)."""
        return self.pseudo_label_dir(SUPERVOXELS, min_size)

    def supervoxel_files(self, min_size: int) -> Dict[int, str]:
        """{volume number: path} of the supervoxel files of `min_size`."""
        return self.pseudo_label_files(SUPERVOXELS, min_size)

    def supervoxel_path(self, volume: VolumeFiles, min_size: int,
                        files: Optional[Dict[int, str]] = None) -> str:
        """The supervoxel file of `volume` (pass `files` from `supervoxel_files` to look up
        many volumes with one folder scan); a missing file is an error naming it."""
        return self.pseudo_label_path(SUPERVOXELS, volume, min_size, files)

    # ------------------------------------------------------------------------- superpixels

    def superpixel_folders(self, min_size: int) -> Tuple[str, str]:
        """The two places superpixels_<min_size>/ may be (inside the data folder, beside it)."""
        return self.pseudo_label_folders(SUPERPIXELS, min_size)

    def superpixel_dir(self, min_size: int) -> str:
        """The folder holding superpixels_<min_size>, found as `supervoxel_dir` finds supervoxels."""
        return self.pseudo_label_dir(SUPERPIXELS, min_size)

    def superpixel_files(self, min_size: int) -> Dict[int, str]:
        """{volume number: path} of the superpixel files of `min_size`."""
        return self.pseudo_label_files(SUPERPIXELS, min_size)

    def superpixel_path(self, volume: VolumeFiles, min_size: int,
                        files: Optional[Dict[int, str]] = None) -> str:
        """The superpixel file of `volume`; a missing file is an error naming it."""
        return self.pseudo_label_path(SUPERPIXELS, volume, min_size, files)
