"""The project's NIfTI reader and writer: geometry round trips through nibabel and SimpleITK
with a non-trivial direction and origin, files of the former SimpleITK writer, dtypes, and
damaged input (truncated gzip streams, NaN and infinite voxels) that must never read as a
plausible volume."""
import gzip
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fafnet.io.nifti import (Geometry, check_finite, count_non_finite, nifti_bytes, read_volume,
                           write_volume)
from tests.helpers import truncate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rotation_geometry():
    """30 degrees about z after swapping y and z (a det -1 permutation composed in): every
    direction cosine is non-trivial, so any axis-order or sign mistake shows."""
    angle = np.deg2rad(30.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                     [0.0, 0.0, 1.0]])
    swap = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return Geometry((0.7, 0.8, 2.5), (-40.25, 25.5, 12.125), tuple((turn @ swap).ravel()))


def noise_volume(shape=(6, 20, 24), seed=0):
    return (100 + 30 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def sitk_write(array, geometry, path):
    """The project's former writer: SimpleITK with the geometry set on the image."""
    sitk.WriteImage(geometry.apply(sitk.GetImageFromArray(array)), str(path))


def assert_geometry_close(actual, expected, atol=1e-5):
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(actual, field), getattr(expected, field), atol=atol,
                                   err_msg=field)


# ----------------------------------------------------------------------------- round trips

def test_written_volume_reads_back_through_both_readers(tmp_path):
    geometry, array = rotation_geometry(), noise_volume()
    path = tmp_path / "volume.nii.gz"
    write_volume(array, geometry, str(path))
    ours, our_geometry = read_volume(str(path))
    assert np.array_equal(ours, array)
    assert_geometry_close(our_geometry, geometry)
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    assert_geometry_close(Geometry.of(image), geometry)
    # The same voxel lands on the same world point in both readers (an overlay check).
    index_xyz = (3, 7, 2)
    world = image.TransformIndexToPhysicalPoint(index_xyz)
    ras = nib.load(str(path)).affine @ np.array(index_xyz + (1,))
    np.testing.assert_allclose(world, [-ras[0], -ras[1], ras[2]], atol=1e-4)


def test_files_of_the_former_simpleitk_writer_read_back_identically(tmp_path):
    geometry, array = rotation_geometry(), noise_volume(seed=1)
    path = tmp_path / "old.nii.gz"
    sitk_write(array, geometry, path)
    reference = sitk.ReadImage(str(path))
    ours, our_geometry = read_volume(str(path))
    assert np.array_equal(ours, sitk.GetArrayFromImage(reference))
    assert_geometry_close(our_geometry, Geometry.of(reference), atol=1e-6)
    # and rewriting it with the new writer changes neither voxels nor geometry for SimpleITK
    write_volume(ours, our_geometry, str(tmp_path / "new.nii.gz"))
    rewritten = sitk.ReadImage(str(tmp_path / "new.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(rewritten), array)
    assert_geometry_close(Geometry.of(rewritten), Geometry.of(reference), atol=1e-6)


def test_axis_aligned_geometry_and_dtypes_are_exact(tmp_path):
    geometry = Geometry((1.5, 1.5, 4.0), (-10.0, 5.0, 2.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32, np.float64):
        array = (np.arange(2 * 3 * 4) * 3).reshape(2, 3, 4).astype(dtype)
        path = str(tmp_path / f"{np.dtype(dtype).name}.nii.gz")
        write_volume(array, geometry, path)
        read, read_geometry = read_volume(path, dtype=None)
        assert read.dtype == dtype and np.array_equal(read, array)
        assert read_geometry == geometry
        assert sitk.GetArrayFromImage(sitk.ReadImage(path)).dtype == dtype


def test_uncompressed_nifti_and_missing_qform_sform_match_simpleitk(tmp_path):
    array = noise_volume((3, 5, 7))
    path = tmp_path / "plain.nii"
    write_volume(array, rotation_geometry(), str(path))
    assert np.array_equal(read_volume(str(path))[0], array)
    # Neither transform set: SimpleITK (and the NIfTI standard) use pixdim, origin 0 and RAS
    # axes; nibabel's own fallback would differ (it centres the volume), so it is not used.
    image = nib.Nifti1Image(array.T, np.diag([0.9, 1.1, 3.0, 1.0]))
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nib.save(image, str(tmp_path / "bare.nii.gz"))
    reference = sitk.ReadImage(str(tmp_path / "bare.nii.gz"))
    read, geometry = read_volume(str(tmp_path / "bare.nii.gz"))
    assert np.array_equal(read, sitk.GetArrayFromImage(reference))
    assert_geometry_close(geometry, Geometry.of(reference), atol=1e-6)


def test_writes_are_atomic_and_reproducible(tmp_path):
    path = tmp_path / "sub" / "volume.nii.gz"
    write_volume(noise_volume(), rotation_geometry(), str(path))
    first = path.read_bytes()
    write_volume(noise_volume(), rotation_geometry(), str(path))
    assert path.read_bytes() == first          # no timestamp in the gzip header
    assert sorted(os.listdir(tmp_path / "sub")) == ["volume.nii.gz"]   # no temporary left
    with pytest.raises(ValueError, match=r"volume\.mha: volumes are written as \.nii\.gz or \.nii"):
        write_volume(noise_volume(), rotation_geometry(), str(tmp_path / "volume.mha"))
    with pytest.raises(ValueError, match="expected a 3D"):
        write_volume(np.zeros((2, 2)), rotation_geometry(), str(tmp_path / "flat.nii.gz"))


def test_reading_and_writing_need_no_simpleitk(tmp_path):
    """A machine without SimpleITK (the GPU benchmark machine) still reads and writes."""
    script = (
        "import sys; sys.modules['SimpleITK'] = None\n"
        "import numpy as np\n"
        "from fafnet.io.nifti import Geometry, read_volume, write_volume\n"
        "g = Geometry((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))\n"
        f"write_volume(np.ones((2, 3, 4), np.float32), g, {str(tmp_path / 'x.nii.gz')!r})\n"
        f"a, h = read_volume({str(tmp_path / 'x.nii.gz')!r})\n"
        "assert a.shape == (2, 3, 4) and h.spacing == (1.0, 2.0, 3.0)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- damaged input

@pytest.mark.parametrize("keep", ["half", 400, "no gzip trailer"])
def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, keep):
    path = tmp_path / "image_0.nii.gz"
    write_volume(noise_volume(), rotation_geometry(), str(path))
    size = path.stat().st_size
    n_bytes = {"half": size // 2, 400: 400, "no gzip trailer": size - 8}[keep]
    truncate(path, n_bytes)
    with pytest.raises(ValueError, match=r"image_0\.nii\.gz: damaged or truncated gzip stream"):
        read_volume(str(path))


def test_truncated_uncompressed_and_non_nifti_files_are_errors(tmp_path):
    path = tmp_path / "plain.nii"
    write_volume(noise_volume(), rotation_geometry(), str(path))
    truncate(path, path.stat().st_size - 100)
    with pytest.raises(ValueError, match=r"cannot read volume .*plain\.nii: .*bytes"):
        read_volume(str(path))
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"not a volume"))
    with pytest.raises(ValueError, match=r"notes\.nii\.gz: not a NIfTI-1 or NIfTI-2 file"):
        read_volume(str(text))
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"\0" * 1000)
    with pytest.raises(ValueError, match=r"fake\.nii\.gz: the name ends in \.gz but the file is not"):
        read_volume(str(fake))
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        read_volume(str(tmp_path / "missing.nii.gz"))


def test_nan_and_inf_voxels_are_kept_and_refused_where_finite_is_required(tmp_path):
    array = noise_volume()
    array[1, 2, 3] = np.nan
    array[2, 3, 4] = np.inf
    array[3, 4, 5] = -np.inf
    path = tmp_path / "image_3.nii.gz"
    write_volume(array, rotation_geometry(), str(path))
    # A second reader confirms the values are on disk (SimpleITK's would show 0 there).
    on_disk = np.asarray(nib.load(str(path)).dataobj).T
    assert np.isnan(on_disk[1, 2, 3]) and np.isposinf(on_disk[2, 3, 4]) and np.isneginf(on_disk[3, 4, 5])
    read, _ = read_volume(str(path))
    assert count_non_finite(read) == (1, 2)
    with pytest.raises(ValueError, match=r"volume .*image_3\.nii\.gz has 3 non-finite voxel\(s\) of "
                                         r"2880 \(1 NaN, 2 infinite\)"):
        read_volume(str(path), require_finite=True)
    check_finite(np.arange(4), "integers are always finite")


def _edit(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


@pytest.mark.parametrize("damage, message", [
    ("flipped byte", r"damaged or truncated gzip stream \(CRC check failed\)"),
    ("unknown data type", r"data code 77 not recognized"),
    ("negative size", r"its header gives the array shape \(-5, 20, 6\)"),
    ("size beyond the data", r"Expected 57600 bytes, got 11520 bytes"),
    ("empty file", r"the name ends in \.gz but the file is not gzip-compressed"),
])
def test_damaged_files_give_one_line_errors_and_nothing_else(tmp_path, capfd, damage, message):
    plain = nifti_bytes(noise_volume(), rotation_geometry(), compress=False)
    dim, datatype = 40, 70   # byte offsets of dim[0..7] and datatype in a NIfTI-1 header
    data = {
        "flipped byte": None,
        "unknown data type": _edit(plain, datatype, (77).to_bytes(2, "little")),
        "negative size": _edit(plain, dim + 2, (-5).to_bytes(2, "little", signed=True)),
        "size beyond the data": _edit(plain, dim + 2, (120).to_bytes(2, "little")),
        "empty file": b"",
    }[damage]
    if data is None:
        data = bytearray(gzip.compress(plain))
        data[len(data) // 2] ^= 0xFF
    elif data:
        data = gzip.compress(data)
    path = tmp_path / "image_0.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"cannot read volume {re.escape(str(path))}: {message}") as error:
        read_volume(str(path))
    assert "\n" not in str(error.value)
    assert capfd.readouterr().err == ""   # nibabel's own header log stays quiet
