"""The Slicer module's MRML side, headless (slicer-core): bridge and scene logic.

The CCTA pipeline is replaced by a test double (:class:`KnownLabelsPipeline`) that returns a
known label map, so these tests exercise Run's MRML plumbing without networks. Expected
scores are computed here from the standard Agatston rules, independently of
``AutoCACLib.scoring``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

import slicer  # noqa: E402  (slicer-core wheel: installed by scripts/setup)
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from AutoCACLib import slicer_bridge as sb  # noqa: E402
from AutoCACLib.errors import InputError  # noqa: E402
from AutoCACLib.scoring import NOT_AXIAL_WARNING, ScoringSettings, score_labelmap  # noqa: E402
from AutoCACLib.segments import CALCIUM_LABEL, SEGMENT_BY_NAME, SEGMENTS, VESSELS  # noqa: E402
from AutoCACLib.volume import Volume  # noqa: E402

SPACING = (1.5, 0.5, 0.6)  # z, y, x: non-isotropic, not 3 mm (Agatston x 1.5 / 3)
PIXEL_MM2 = 0.5 * 0.6


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def synthetic_case():
    """A small CT with calcium in LM, LAD and RCA, and a bright spot no segment holds.

    Returns the Volume and its AutoCAC label map. Each calcium segment holds its lesion plus
    a rim of soft-tissue voxels (below threshold, so they must not count).
    """
    image = np.full((12, 40, 48), 40.0, dtype=np.float32)
    image[:, :, :6] = -1000.0  # air: this is a CT
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[3:9, 5:12, 30:40] = SEGMENT_BY_NAME["Aorta"].label
    lesions = {  # vessel: (slice, rows, cols, HU, peak HU)
        "LM": (2, slice(10, 12), slice(10, 13), 320.0, 320.0),   # 6 px, weight 3
        "LAD": (4, slice(20, 23), slice(20, 23), 250.0, 450.0),  # 9 px, weight 4
        "RCA": (7, slice(30, 34), slice(8, 10), 180.0, 180.0),   # 8 px, weight 1
    }
    for vessel, (z, rows, cols, hu, peak) in lesions.items():
        image[z, rows, cols] = hu
        image[z, rows.start, cols.start] = peak
        labels[z, rows.start - 1:rows.stop + 1, cols.start - 1:cols.stop + 1] = \
            CALCIUM_LABEL[vessel]
        labels[z + 1, rows, cols] = SEGMENT_BY_NAME[vessel].label
    image[9, 14:17, 36:39] = 350.0  # missed by the "pipeline": 9 px, weight 3
    volume = Volume(image, SPACING, origin=(-12.5, 30.25, -801.0),
                    direction=rotation(30, -15), kvp=100.0)
    return volume, labels


MISSED_SPOT = (9, slice(14, 17), slice(36, 39))


def standard_agatston(image, calcium_mask, spacing):
    """Agatston, volume and lesion count by the textbook rules, one slice at a time."""
    agatston = volume = 0.0
    count = 0
    pixel = spacing[1] * spacing[2]
    for z in range(image.shape[0]):
        hot = calcium_mask[z] & (image[z] >= 130)
        components, n = ndimage.label(hot, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            lesion = components == i
            area = lesion.sum() * pixel
            if area < 1.0:
                continue
            peak = image[z][lesion].max()
            weight = 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
            agatston += area * weight * spacing[0] / 3.0
            volume += lesion.sum() * pixel * spacing[0]
            count += 1
    return agatston, volume, count


class KnownLabelsPipeline:
    """Test double for ``AutoCACLib.pipeline.run_pipeline``: returns a fixed label map.

    Its scores come from the standard scorer so that Recompute on an unedited segmentation
    reproduces them. It records its calls and reports two progress stages.
    """

    def __init__(self, labels, status="ok"):
        self.labels = labels
        self.status = status
        self.calls = []

    def __call__(self, volume, device="auto", settings=None, progress=None, cancel=None):
        self.calls.append({"device": device, "settings": settings, "shape": volume.shape})
        for stage in ("segment", "score"):
            if progress:
                progress(stage, 0.5)
            if cancel and cancel():
                raise RuntimeError("cancelled")
        scores = score_labelmap(volume, self.labels, settings).to_dict()
        scores.update(status=self.status, failure_reason=None, calibration_factor=310.0,
                      warnings=["test double: no networks were run"])
        return SimpleNamespace(labels=self.labels.copy(), scores=scores)


@pytest.fixture
def case():
    headless = sb.HeadlessScene()
    volume, labels = synthetic_case()
    node = sb.volume_to_node(volume, headless.scene, "CCTA")
    pipeline = KnownLabelsPipeline(labels)
    logic = sb.SceneLogic(headless.scene, pipeline=pipeline)
    return SimpleNamespace(headless=headless, scene=headless.scene, volume=volume,
                           labels=labels, node=node, pipeline=pipeline, logic=logic)


def table_rows(table_node) -> dict:
    """{vessel: {column: value}} of a score table."""
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = {}
    for r in range(table.GetNumberOfRows()):
        values = {n: table.GetValueByName(r, n) for n in names}
        rows[values.pop("Vessel").ToString()] = {
            n: (v.ToString() if v.IsString() else v.ToDouble()) for n, v in values.items()}
    return rows


def oriented_mask(mask: np.ndarray, volume_node):
    """A vtkOrientedImageData holding ``mask`` [z, y, x] on the volume's grid."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(mask, dtype=np.uint8).ravel(), deep=True,
        array_type=vtk.VTK_UNSIGNED_CHAR))
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def edit_segment(segmentation_node, volume_node, name, mask):
    """Replace a segment's voxels, as a Segment Editor effect does."""
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_mask(mask, volume_node), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def segment_mask(segmentation_node, volume_node, name):
    return sb.labels_from_segmentation(segmentation_node, volume_node, (name,)) > 0


def expected_rows(volume, labels):
    rows = {}
    for v in VESSELS:
        rows[v] = standard_agatston(volume.array, labels == CALCIUM_LABEL[v], volume.spacing)
    rows["Total"] = tuple(sum(r[i] for r in rows.values()) for i in range(3))
    return rows


def assert_table_matches(table_node, expected):
    rows = table_rows(table_node)
    for vessel, (agatston, volume_mm3, count) in expected.items():
        assert rows[vessel]["Agatston"] == pytest.approx(agatston, abs=1e-3), vessel
        assert rows[vessel]["Volume"] == pytest.approx(volume_mm3, abs=1e-3), vessel
        assert rows[vessel]["Lesions"] == count, vessel


# --- geometry -----------------------------------------------------------------------------

def test_geometry_round_trip_lps_ras_with_rotation_and_anisotropic_spacing(case):
    back = sb.volume_from_node(case.node)
    assert back.same_geometry(case.volume, tol=1e-6)
    np.testing.assert_array_equal(back.array, case.volume.array)
    # Independent check: a voxel's position from SimpleITK (LPS) vs the node's IJK->RAS.
    itk = case.volume.to_sitk()
    matrix = vtk.vtkMatrix4x4()
    case.node.GetIJKToRASMatrix(matrix)
    for ijk in [(0, 0, 0), (47, 0, 0), (3, 39, 11), (47, 39, 11)]:
        lps = np.array(itk.TransformIndexToPhysicalPoint(ijk))
        ras = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)
    assert case.node.GetSpacing() == pytest.approx((0.6, 0.5, 1.5))


# --- run ----------------------------------------------------------------------------------

def test_run_writes_segmentation_and_score_table(case):
    out = case.logic.run(case.node, device="cpu", settings=ScoringSettings())
    assert case.pipeline.calls == [{"device": "cpu", "settings": ScoringSettings(),
                                    "shape": case.volume.shape}]
    segmentation = out.segmentation.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName()
            for i in range(segmentation.GetNumberOfSegments())] == [s.name for s in SEGMENTS]
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        assert segment.GetColor() == pytest.approx(spec.color)
        assert sb.segment_terminology(segment) == spec.terminology()
    np.testing.assert_array_equal(
        sb.labels_from_segmentation(out.segmentation, case.node), case.labels)
    assert out.segmentation.GetNodeReference(
        out.segmentation.GetReferenceImageGeometryReferenceRole()) is case.node
    # Score table: typed columns with units, rows LM..Total, the expected values.
    table = out.table
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [
        "Vessel", "Agatston", "Volume", "Lesions", "Category", "CAC-DRS"]  # no mass: uncalibrated
    assert table.GetColumnUnitLabel("Volume") == "mm3"
    assert table.GetTable().GetColumnByName("Agatston").GetDataType() == vtk.VTK_DOUBLE
    assert table.GetTable().GetColumnByName("Lesions").GetDataType() == vtk.VTK_INT
    expected = expected_rows(case.volume, case.labels)
    assert expected["LAD"][0] == pytest.approx(9 * PIXEL_MM2 * 4 * 0.5)  # hand check
    assert_table_matches(table, expected)
    assert table_rows(table)["Total"]["Category"] == "1-10"
    assert sb.scores_from_table(table)["status"] == "ok"
    assert table.GetNodeReference(sb.SEGMENTATION_ROLE) is out.segmentation
    assert out.lesion_table.GetNumberOfRows() == 3
    assert sorted(table_rows(out.lesion_table)) == ["LAD", "LM", "RCA"]


def test_mass_column_only_when_calibrated(case):
    out = case.logic.run(case.node, settings=ScoringSettings(mass_calibration=0.8))
    assert out.table.GetColumnUnitLabel("Mass") == "mg"
    rows = table_rows(out.table)
    mask = (case.labels == CALCIUM_LABEL["LAD"]) & (case.volume.array >= 130)
    expected = 0.8e-3 * mask.sum() * np.prod(SPACING) * case.volume.array[mask].mean()
    assert rows["LAD"]["Mass"] == pytest.approx(expected, rel=1e-3)


def test_outputs_go_to_the_volume_study(case):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(case.scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, case.node)
    out = case.logic.run(case.node)
    for node in (out.segmentation, out.table, out.lesion_table):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_rerun_never_overwrites_an_existing_result_silently(case):
    first = case.logic.run(case.node)
    erased = np.zeros(case.labels.shape, dtype=bool)
    edit_segment(first.segmentation, case.node, "Calcium RCA", erased)  # the user's edit
    before = sb.labels_from_segmentation(first.segmentation, case.node)
    second = case.logic.run(case.node, segmentation_node=first.segmentation,
                            table_node=first.table)
    assert second.segmentation is not first.segmentation
    assert second.table is not first.table and second.lesion_table is not first.lesion_table
    np.testing.assert_array_equal(
        sb.labels_from_segmentation(first.segmentation, case.node), before)
    third = case.logic.run(case.node, segmentation_node=first.segmentation,
                           table_node=first.table, replace=True)
    assert (third.segmentation, third.table, third.lesion_table) == (
        first.segmentation, first.table, first.lesion_table)
    np.testing.assert_array_equal(
        sb.labels_from_segmentation(first.segmentation, case.node), case.labels)


# --- recompute after an edit --------------------------------------------------------------

def test_recompute_without_edit_reproduces_run(case):
    out = case.logic.run(case.node)
    before, lesions = table_rows(out.table), table_rows(out.lesion_table)
    scores = case.logic.recompute(out.table)
    assert table_rows(out.table) == before
    assert table_rows(out.lesion_table) == lesions  # slice indices too (scored on a crop)
    assert [lesions[v]["Slice"] for v in ("LM", "LAD", "RCA")] == [2, 4, 7]
    assert scores["recomputed"] and scores["status"] == "ok"
    assert "test double: no networks were run" in scores["warnings"]


def test_coronal_stack_is_scored_on_axial_slices_by_run_and_recompute():
    # The same voxels stored as coronal slices (a reformatted series): the scores are those
    # of the axial slices, before and after Recompute.
    volume, labels = synthetic_case()
    coronal = Volume(volume.array.transpose(1, 0, 2),
                     (volume.spacing[1], volume.spacing[0], volume.spacing[2]), volume.origin,
                     volume.direction[:, [0, 2, 1]], volume.kvp)
    headless = sb.HeadlessScene()
    node = sb.volume_to_node(coronal, headless.scene, "CCTA coronal")
    logic = sb.SceneLogic(headless.scene,
                          pipeline=KnownLabelsPipeline(labels.transpose(1, 0, 2)))
    out = logic.run(node)
    expected = expected_rows(volume, labels)
    assert_table_matches(out.table, expected)
    scores = logic.recompute(out.table)
    assert_table_matches(out.table, expected)
    assert NOT_AXIAL_WARNING in scores["warnings"]


@pytest.mark.parametrize("edit", ["paint", "erase", "move"])
def test_recompute_after_edit_changes_exactly_the_affected_rows(case, edit):
    out = case.logic.run(case.node)
    before = table_rows(out.table)
    edited = case.labels.copy()
    if edit == "paint":  # add the missed spot to Calcium LCx
        mask = segment_mask(out.segmentation, case.node, "Calcium LCx")
        mask[MISSED_SPOT] = True
        edit_segment(out.segmentation, case.node, "Calcium LCx", mask)
        edited[MISSED_SPOT] = CALCIUM_LABEL["LCx"]
        affected = {"LCx": (9 * PIXEL_MM2 * 3 * 0.5, 9 * PIXEL_MM2 * 1.5, 1)}
    elif edit == "erase":  # the RCA "lesion" was a false positive
        edit_segment(out.segmentation, case.node, "Calcium RCA",
                     np.zeros(case.labels.shape, dtype=bool))
        edited[edited == CALCIUM_LABEL["RCA"]] = 0
        affected = {"RCA": (-8 * PIXEL_MM2 * 1 * 0.5, -8 * PIXEL_MM2 * 1.5, -1)}
    else:  # the LM lesion belongs to the LAD
        lesion = segment_mask(out.segmentation, case.node, "Calcium LM")
        edit_segment(out.segmentation, case.node, "Calcium LM", np.zeros_like(lesion))
        lad = segment_mask(out.segmentation, case.node, "Calcium LAD") | lesion
        edit_segment(out.segmentation, case.node, "Calcium LAD", lad)
        edited[lesion] = CALCIUM_LABEL["LAD"]
        lm = 6 * PIXEL_MM2 * 3 * 0.5, 6 * PIXEL_MM2 * 1.5, 1
        affected = {"LM": tuple(-x for x in lm), "LAD": lm}
    segmentation_before = sb.labels_from_segmentation(out.segmentation, case.node)
    case.logic.recompute(out.table)
    np.testing.assert_array_equal(  # Recompute never touches the segmentation
        sb.labels_from_segmentation(out.segmentation, case.node), segmentation_before)
    after = table_rows(out.table)
    total = tuple(sum(d[i] for d in affected.values()) for i in range(3))
    for vessel in list(VESSELS) + ["Total"]:
        delta = affected.get(vessel, total if vessel == "Total" else (0.0, 0.0, 0))
        assert after[vessel]["Agatston"] - before[vessel]["Agatston"] == pytest.approx(
            delta[0], abs=1e-3), vessel
        assert after[vessel]["Volume"] - before[vessel]["Volume"] == pytest.approx(
            delta[1], abs=1e-3), vessel
        assert after[vessel]["Lesions"] - before[vessel]["Lesions"] == delta[2], vessel
    assert_table_matches(out.table, expected_rows(case.volume, edited))
    assert out.lesion_table.GetNumberOfRows() == int(after["Total"]["Lesions"])


def test_recompute_reads_layers_on_other_grids(case):
    """A segment moved to its own layer, cropped, and one on a finer grid still score right."""
    out = case.logic.run(case.node)
    segmentation = out.segmentation.GetSegmentation()
    # Own layer, cropped to the lesion's bounding box (aligned grid, index offset).
    lad_id = segmentation.GetSegmentIdBySegmentName("Calcium LAD")
    lad = case.labels == CALCIUM_LABEL["LAD"]
    segmentation.SeparateSegmentLabelmap(lad_id)
    cropped = oriented_mask(lad, case.node)
    extent = [int(v) for axis in reversed(np.nonzero(lad)) for v in (axis.min(), axis.max())]
    clip = vtk.vtkImageConstantPad()
    clip.SetInputData(cropped)
    clip.SetOutputWholeExtent(extent)
    clip.Update()
    cropped.ShallowCopy(clip.GetOutput())
    segment = segmentation.GetSegment(lad_id)
    segment.RemoveRepresentation(sb.BINARY_LABELMAP)
    segment.AddRepresentation(sb.BINARY_LABELMAP, cropped)
    segment.SetLabelValue(1)
    # RCA on a grid twice as fine in-plane: nearest-neighbour resampling brings it back.
    rca_id = segmentation.GetSegmentIdBySegmentName("Calcium RCA")
    rca = np.repeat(np.repeat(case.labels == CALCIUM_LABEL["RCA"], 2, axis=1), 2, axis=2)
    fine = oriented_mask(rca, case.node)
    matrix = vtk.vtkMatrix4x4()
    case.node.GetIJKToRASMatrix(matrix)
    for r in range(3):
        for c in range(2):
            matrix.SetElement(r, c, matrix.GetElement(r, c) / 2)
        # fine voxel 0 centre sits a quarter voxel before the coarse voxel 0 centre
        matrix.SetElement(r, 3, matrix.GetElement(r, 3) - (matrix.GetElement(r, 0)
                                                            + matrix.GetElement(r, 1)) / 2)
    fine.SetImageToWorldMatrix(matrix)
    segmentation.SeparateSegmentLabelmap(rca_id)
    segment = segmentation.GetSegment(rca_id)
    segment.RemoveRepresentation(sb.BINARY_LABELMAP)
    segment.AddRepresentation(sb.BINARY_LABELMAP, fine)
    segment.SetLabelValue(1)
    assert segmentation.GetNumberOfLayers() == 3
    labels = sb.labels_from_segmentation(out.segmentation, case.node, sb.CALCIUM_NAMES)
    calcium = np.isin(case.labels, list(CALCIUM_LABEL.values()))
    np.testing.assert_array_equal(labels, np.where(calcium, case.labels, 0))
    before = table_rows(out.table)
    case.logic.recompute(out.table)
    assert table_rows(out.table) == before


def test_recompute_is_fast_on_a_clinical_size_case():
    headless = sb.HeadlessScene()
    shape = (280, 512, 512)
    image = np.full(shape, -50, dtype=np.int16)
    image[:, :, :40] = -1000
    labels = np.zeros(shape, dtype=np.uint8)
    labels[100:180, 200:300, 200:300] = SEGMENT_BY_NAME["LAD"].label
    rng = np.random.default_rng(0)
    for vessel in VESSELS:
        for z, y, x in rng.integers((60, 150, 150), (220, 350, 350), size=(20, 3)):
            image[z, y:y + 4, x:x + 4] = 400
            labels[z, y - 1:y + 5, x - 1:x + 5] = CALCIUM_LABEL[vessel]
    volume = Volume(image, (0.5, 0.4, 0.4))
    node = sb.volume_to_node(volume, headless.scene)
    logic = sb.SceneLogic(headless.scene, pipeline=KnownLabelsPipeline(labels))
    out = logic.run(node)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        logic.recompute(out.table)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"Recompute took {best:.2f} s"
    assert table_rows(out.table)["Total"]["Lesions"] > 0


# --- saving and loading -------------------------------------------------------------------

def test_scene_bundle_round_trip_keeps_segments_terminology_and_scores(case, tmp_path):
    from AutoCACLib.segmentation_io import read_segment_masks

    out = case.logic.run(case.node)
    edit_segment(out.segmentation, case.node, "Calcium RCA",
                 np.zeros(case.labels.shape, dtype=bool))
    case.logic.recompute(out.table)
    rows = table_rows(out.table)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert case.headless.application_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle),
                                                                                None)
    assert case.headless.application_logic.Zip(str(tmp_path / "case.mrb"), str(bundle))
    (tmp_path / "unpacked").mkdir()
    loaded = sb.HeadlessScene()
    assert loaded.application_logic.OpenSlicerDataBundle(str(tmp_path / "case.mrb"),
                                                         str(tmp_path / "unpacked"))
    table = loaded.scene.GetFirstNodeByName(out.table.GetName())
    volume_node = loaded.scene.GetFirstNodeByName("CCTA")
    segmentation_node = table.GetNodeReference(sb.SEGMENTATION_ROLE)
    assert segmentation_node.GetName() == out.segmentation.GetName()
    segmentation = segmentation_node.GetSegmentation()
    for spec in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
        assert sb.segment_terminology(segment) == spec.terminology()
        assert segment.GetColor() == pytest.approx(spec.color, abs=1e-3)
    edited = case.labels.copy()
    edited[edited == CALCIUM_LABEL["RCA"]] = 0
    np.testing.assert_array_equal(
        sb.labels_from_segmentation(segmentation_node, volume_node), edited)
    assert table_rows(table) == rows
    assert table.GetColumnUnitLabel("Volume") == "mm3"
    assert table.GetTable().GetColumnByName("Lesions").GetDataType() == vtk.VTK_INT
    assert sb.scores_from_table(table)["recomputed"] is True
    assert table.GetNodeReference(sb.LESION_TABLE_ROLE).GetNumberOfRows() == 2
    # The loaded scene recomputes to the same numbers ...
    sb.SceneLogic(loaded.scene, pipeline=None).recompute(table)
    assert table_rows(table) == rows
    # ... and the .seg.nrrd Slicer wrote is readable by AutoCACLib (slicerio).
    masks, _ = read_segment_masks(next((bundle / "Data").glob("*.seg.nrrd")))
    assert masks["Calcium LAD"].transpose(0, 1, 2).sum() == (
        case.labels == CALCIUM_LABEL["LAD"]).sum()


# --- bad input ----------------------------------------------------------------------------

def _bad_volume_nodes(scene, volume):
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    label_node.SetAndObserveImageData(sb._image_from_array(volume.array.astype(np.int16)))
    flat = Volume(volume.array[:1], volume.spacing)
    mr = Volume(np.linspace(0, 800, volume.array.size).reshape(volume.shape), volume.spacing)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    rgb = vtk.vtkImageData()
    rgb.SetDimensions(8, 8, 8)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    colour.SetAndObserveImageData(rgb)
    return {
        "none": (None, "no input volume"),
        "labelmap": (label_node, "is a label map"),
        "2d": (sb.volume_to_node(flat, scene, "slice"), "2D image"),
        "not ct": (sb.volume_to_node(mr, scene, "MR"), "does not look like a CT"),
        "colour": (colour, "components"),
    }


def test_bad_inputs_leave_the_scene_unchanged(case):
    bad = _bad_volume_nodes(case.scene, case.volume)
    for name, (node, message) in bad.items():
        before = case.scene.GetNumberOfNodes()
        with pytest.raises(InputError, match=message):
            case.logic.run(node)
        assert case.scene.GetNumberOfNodes() == before, name
    assert case.pipeline.calls == []


def test_failed_or_cancelled_runs_leave_the_scene_unchanged(case):
    before = case.scene.GetNumberOfNodes()
    stages = []
    assert case.logic.run(case.node, progress=lambda s, f: stages.append(s),
                          cancel=lambda: len(stages) > 0) is None
    assert stages == ["segment"]

    def broken_pipeline(*args, **kwargs):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        sb.SceneLogic(case.scene, pipeline=broken_pipeline).run(case.node)
    def wrong_grid_pipeline(volume, **kwargs):
        return SimpleNamespace(labels=case.labels[:-1], scores={"status": "ok"})

    with pytest.raises(ValueError, match="shape"):
        sb.SceneLogic(case.scene, pipeline=wrong_grid_pipeline).run(case.node)
    assert case.scene.GetNumberOfNodes() == before


def test_recompute_bad_inputs(case):
    with pytest.raises(InputError, match="no score table"):
        case.logic.recompute(None)
    table = case.scene.AddNewNodeByClass("vtkMRMLTableNode", "empty")
    with pytest.raises(InputError, match="no segmentation"):
        case.logic.recompute(table)
    other = case.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    other.SetReferenceImageGeometryParameterFromVolumeNode(case.node)
    other.GetSegmentation().AddEmptySegment("Liver")
    with pytest.raises(InputError, match="no AutoCAC segments"):
        case.logic.recompute(table, segmentation_node=other)
    assert table.GetNumberOfRows() == 0


def test_scores_json_attribute_is_the_full_result(case):
    out = case.logic.run(case.node)
    stored = json.loads(out.table.GetAttribute(sb.SCORES_ATTRIBUTE))
    assert stored["kvp"] == 100.0
    assert stored["settings"]["threshold_hu"] == 130.0
    assert len(stored["lesions"]) == 3


def test_recompute_of_a_ccta_result_keeps_the_calibration_adapted_thresholds(case):
    """A pipeline result (method "ccta") is rescored with its calibration factor: unedited
    segments keep the run's scores, which differ from standard 130 HU scoring."""
    from AutoCACLib.ccta_scoring import CctaScoringParams
    from AutoCACLib.pipeline import ccta_score

    params = CctaScoringParams(offset_fraction=0.2)
    calibration = 400.0

    def ccta_pipeline(volume, **kwargs):
        scores = ccta_score(volume, case.labels, ScoringSettings(), calibration, params).to_dict()
        scores.update(status="ok", failure_reason=None, method="ccta",
                      calibration_factor=calibration,
                      ccta_scoring_params=dataclasses.asdict(params))
        return SimpleNamespace(labels=case.labels.copy(), scores=scores)

    logic = sb.SceneLogic(case.scene, pipeline=ccta_pipeline)
    out = logic.run(case.node)
    run_rows = table_rows(out.table)
    standard = score_labelmap(case.volume, case.labels).agatston["total"]
    assert run_rows["Total"]["Agatston"] != pytest.approx(standard)
    logic.recompute(out.table)
    assert table_rows(out.table) == run_rows
