"""Reading and writing images and segmentations, and the errors users get."""

import numpy as np
import pytest
import SimpleITK as sitk

from AutoCACLib.calcium_input import read_calcium_labels
from AutoCACLib.errors import InputError
from AutoCACLib.segmentation_io import read_segment_masks, write_segmentation
from AutoCACLib.segments import CALCIUM_LABEL, SEGMENT_BY_NAME, SEGMENTS, VESSEL_LABEL
from AutoCACLib.volume import Volume, read_volume, to_axial_lps, write_volume

ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z


def ct(shape=(6, 16, 20), spacing=(1.5, 0.4, 0.45), direction=np.eye(3), kvp=100.0):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 20, shape).astype(np.float32)
    a[:, :2] = -1000
    return Volume(a, spacing, (10.0, -20.5, 300.0), direction, kvp)


def _positions(volume):
    """Physical LPS position (mm) of every voxel, in array order."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    xyz = index.reshape(-1, 3)[:, ::-1] * np.asarray(volume.spacing)[::-1]
    return np.asarray(volume.origin) + xyz @ volume.direction.T


def _tilt(degrees):
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


@pytest.mark.parametrize("direction", [
    np.diag([-1.0, -1.0, 1.0]),                             # stored right-to-left (RAS)
    np.diag([1.0, 1.0, -1.0]),                              # feet-first
    np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),     # coronal stack
    np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]),    # sagittal stack
    _tilt(12) @ np.diag([-1.0, 1.0, -1.0]),                 # tilted gantry, flipped
])
def test_axial_lps_keeps_every_voxel_where_it_is(direction):
    shape = (5, 6, 7)
    v = Volume(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), (1.5, 0.4, 0.45),
               (10.0, -20.5, 300.0), direction)
    axial, change = to_axial_lps(v)
    assert not change.identity
    # The axes now run along L, P and S, each the right way (a tilt stays a tilt).
    assert np.all(np.argmax(np.abs(axial.direction), axis=0) == [0, 1, 2])
    assert np.all(np.diag(axial.direction) > 0.9)
    # Every voxel keeps its value and physical position; arrays map both ways.
    old = _positions(v)[axial.array.ravel().astype(int)]
    assert np.allclose(_positions(axial), old, atol=1e-4)
    assert np.array_equal(change.undo(axial.array), v.array)
    assert np.array_equal(change.apply(v.array), axial.array)
    assert axial.same_geometry(to_axial_lps(axial)[0]) and to_axial_lps(axial)[1].identity


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_image_round_trip_keeps_geometry_and_kvp(tmp_path, suffix):
    v = ct(direction=ROT)
    write_volume(v, tmp_path / f"img{suffix}")
    r = read_volume(tmp_path / f"img{suffix}")
    assert r.shape == v.shape
    assert np.allclose(r.array, v.array)
    assert r.spacing == pytest.approx(v.spacing)
    assert r.origin == pytest.approx(v.origin, abs=1e-4)
    assert np.allclose(r.direction, ROT, atol=1e-6)
    if suffix != ".nii.gz":                 # NIfTI has no free-text header field
        assert r.kvp == 100.0


def _write_dicom_series(folder, v, positions):
    """One DICOM file per slice of ``v``, slice k at ImagePositionPatient ``positions[k]``."""
    for k, position in enumerate(positions):
        s = sitk.GetImageFromArray(v.array[k:k + 1].astype(np.int16))
        s.SetSpacing((v.spacing[2], v.spacing[1], v.spacing[0]))
        s.SetOrigin(tuple(position))
        for key, value in {"0008|0060": "CT", "0018|0060": "80", "0020|0013": str(k + 1),
                           "0020|0032": "\\".join(str(c) for c in position),
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|000e": "1.2.3.4",
                           "0018|0050": str(v.spacing[0])}.items():
            s.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"s{k}.dcm"))
        writer.Execute(s)


def test_dicom_series_keeps_kvp(tmp_path):
    v = ct(shape=(4, 16, 16), spacing=(2.0, 0.5, 0.5))
    _write_dicom_series(tmp_path, v, [(0.0, 0.0, 2.0 * k) for k in range(4)])
    r = read_volume(tmp_path)
    assert r.shape == (4, 16, 16)
    assert r.kvp == 80.0
    assert r.spacing[0] == pytest.approx(2.0)


def test_dicom_positions_rounded_to_a_tenth_of_a_mm_are_even(tmp_path):
    # 0.625 mm slices whose positions a writer rounded to 0.1 mm: 0.6 and 0.7 mm apart.
    v = ct(shape=(6, 16, 16), spacing=(0.625, 0.5, 0.5))
    _write_dicom_series(tmp_path, v, [(0.0, 0.0, round(0.625 * k, 1)) for k in range(6)])
    assert read_volume(tmp_path).shape == (6, 16, 16)


@pytest.mark.parametrize("heights, slope, message", [
    ([0.0, 2.0, 6.0, 8.0, 10.0], 0.0,
     r"uneven slice spacing \(2.00 mm, but 4.00 mm between s1.dcm and s2.dcm\): slices are "
     r"missing"),
    ([0.0, 2.0, 2.0, 4.0, 6.0], 0.0, "has 1 slice\\(s\\) at the same position as another"),
    ([0.0, 2.0, 4.0, 6.0, 8.0], np.tan(np.radians(10.0)), "gantry tilt of 10.0 degrees"),
])
def test_dicom_series_with_a_wrong_geometry_is_refused(tmp_path, capfd, heights, slope,
                                                       message):
    # The series reader would build an evenly spaced, untilted grid from such slices, and
    # every volume measured on it would be wrong.
    v = ct(shape=(5, 16, 16), spacing=(2.0, 0.5, 0.5))
    _write_dicom_series(tmp_path, v, [(0.0, slope * h, h) for h in heights])
    with pytest.raises(InputError, match=message) as err:
        read_volume(tmp_path)
    assert "\n" not in str(err.value)
    assert capfd.readouterr().err == ""          # nor a reader's warning before it


def test_multi_frame_dicom_file_is_refused_by_name(tmp_path):
    image = sitk.GetImageFromArray(ct(shape=(5, 16, 16)).array.astype(np.int16))
    image.SetMetaData("0008|0060", "CT")
    sitk.WriteImage(image, str(tmp_path / "enhanced.dcm"))
    with pytest.raises(InputError, match="one multi-frame .enhanced. file of 5 frames"):
        read_volume(tmp_path)


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nrrd")
    (tmp_path / "junk.nrrd").write_text("not an image")
    with pytest.raises(InputError, match="cannot read") as err:
        read_volume(tmp_path / "junk.nrrd")
    assert "\n" not in str(err.value)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(tmp_path / "2d.nrrd"))
    with pytest.raises(InputError, match="2D"):
        read_volume(tmp_path / "2d.nrrd")
    mr = ct()
    mr.array = np.abs(mr.array) + 100          # MR-like: no air near -1000
    write_volume(mr, tmp_path / "mr.nrrd")
    with pytest.raises(InputError, match="Hounsfield"):
        read_volume(tmp_path / "mr.nrrd")
    with pytest.raises(InputError, match="no DICOM series"):
        (tmp_path / "empty").mkdir()
        read_volume(tmp_path / "empty")


def test_segmentation_round_trip_names_colours_terminology(tmp_path):
    v = ct(direction=ROT)
    labels = np.zeros(v.shape, dtype=np.uint8)
    labels[1:3, 5:8, 5:8] = SEGMENT_BY_NAME["Aorta"].label
    labels[2, 10, 10:14] = VESSEL_LABEL["LAD"]
    labels[2, 11, 11] = CALCIUM_LABEL["LAD"]
    write_segmentation(tmp_path / "s.seg.nrrd", labels, v)
    masks, geometry = read_segment_masks(tmp_path / "s.seg.nrrd")
    assert set(masks) == {s.name for s in SEGMENTS}
    assert geometry.same_geometry(v)
    for spec in SEGMENTS:
        assert np.array_equal(masks[spec.name], labels == spec.label), spec.name
    import slicerio
    seg = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"), skip_voxels=True)
    by_name = {s["name"]: s for s in seg["segments"]}
    assert by_name["Calcium LAD"]["terminology"]["anatomicRegion"][1] == "59438005"
    assert by_name["Aorta"]["terminology"]["type"][1] == "15825003"
    assert by_name["RCA"]["color"] == pytest.approx(list(SEGMENT_BY_NAME["RCA"].color), abs=1e-3)


def test_calcium_labels_from_cropped_segmentation(tmp_path):
    v = ct()
    crop = Volume(np.zeros((2, 4, 5)), v.spacing,
                  origin=tuple(np.array(v.origin) + [3 * 0.45, 5 * 0.4, 2 * 1.5]))
    labels = np.zeros(crop.shape, dtype=np.uint8)
    labels[1, 2, 3] = CALCIUM_LABEL["LCx"]
    write_segmentation(tmp_path / "crop.seg.nrrd", labels, crop, include_empty=False)
    out = read_calcium_labels(tmp_path / "crop.seg.nrrd", v)
    assert out.shape == v.shape
    assert list(zip(*np.nonzero(out))) == [(3, 7, 6)]
    assert out[3, 7, 6] == 3


def test_segmentation_geometry_mismatch_and_empty(tmp_path):
    v = ct()
    other = Volume(np.zeros(v.shape), (1.0, 1.0, 1.0), v.origin)
    labels = np.zeros(v.shape, dtype=np.uint8)
    labels[1, 1, 1] = CALCIUM_LABEL["LM"]
    write_segmentation(tmp_path / "bad.seg.nrrd", labels, other)
    with pytest.raises(InputError, match="does not match the image geometry"):
        read_calcium_labels(tmp_path / "bad.seg.nrrd", v)
    write_segmentation(tmp_path / "empty.seg.nrrd", np.zeros(v.shape, np.uint8), v)
    with pytest.raises(InputError, match="empty"):
        read_calcium_labels(tmp_path / "empty.seg.nrrd", v)
    no_calcium = np.zeros(v.shape, dtype=np.uint8)
    no_calcium[1, 1, 1] = VESSEL_LABEL["LM"]
    write_segmentation(tmp_path / "lumen.seg.nrrd", no_calcium, v,
                       segments=(SEGMENT_BY_NAME["LM"],))
    with pytest.raises(InputError, match="no calcium segment"):
        read_calcium_labels(tmp_path / "lumen.seg.nrrd", v)
    write_volume(v.with_array(np.full(v.shape, 7, np.int16)), tmp_path / "labels7.nrrd")
    with pytest.raises(InputError, match="1=LM"):
        read_calcium_labels(tmp_path / "labels7.nrrd", v)
    write_volume(v.with_array(np.zeros(v.shape, np.int16)), tmp_path / "labels0.nrrd")
    with pytest.raises(InputError, match="empty"):
        read_calcium_labels(tmp_path / "labels0.nrrd", v)
