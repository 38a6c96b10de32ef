"""The one bridge between MRML nodes and AutoCAC's arrays.

This is the only module of ``AutoCACLib`` that imports ``slicer`` and ``vtk``. It uses only
MRML and VTK calls that exist both inside 3D Slicer and in the ``slicer-core`` wheel, so the
same code runs in the Slicer module and in headless tests. The scene is always a parameter:
nothing here reaches for ``slicer.mrmlScene``.

Geometry: Slicer's volume nodes map voxel index (i, j, k) to RAS; AutoCAC's
:class:`~AutoCACLib.volume.Volume` uses ITK's LPS (``origin``, ``direction``) and arrays
indexed ``[k, j, i]`` = ``[z, y, x]``. RAS = diag(-1, -1, 1) LPS.

Results live in three kinds of node:

* a segmentation node with the segments of :data:`AutoCACLib.segments.SEGMENTS`
  (names, colours, terminology), all in one shared labelmap layer on the volume's grid;
* a table node with one row per vessel (LM, LAD, LCx, RCA) and a Total row, typed columns
  with units, and the whole score dictionary as JSON in the ``AutoCAC.Scores`` attribute;
* optionally a per-lesion table node.

The table node references its segmentation (role ``AutoCAC.Segmentation``) and lesion table
(``AutoCAC.LesionTable``); the segmentation references its volume through Slicer's own
reference-image-geometry reference. References and attributes are saved with the scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .segments import SEGMENT_BY_NAME, SEGMENTS, VESSELS
from .volume import Volume, axial_reorientation, check_is_ct

#: RAS from LPS (and back: the matrix is its own inverse).
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"
SCORES_ATTRIBUTE = "AutoCAC.Scores"
SEGMENTATION_ROLE = "AutoCAC.Segmentation"
LESION_TABLE_ROLE = "AutoCAC.LesionTable"
#: Volume node attribute holding the tube voltage (kV), when known.
KVP_ATTRIBUTE = "AutoCAC.kVp"
CALCIUM_NAMES = tuple(f"Calcium {v}" for v in VESSELS)

_VTK_TYPES = {np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.int16): vtk.VTK_SHORT,
              np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT, np.dtype(np.int32): vtk.VTK_INT,
              np.dtype(np.float32): vtk.VTK_FLOAT, np.dtype(np.float64): vtk.VTK_DOUBLE}


class HeadlessScene:
    """An MRML scene with the logic that segmentations need, for use outside Slicer.

    Inside Slicer use ``slicer.mrmlScene``. Outside, segmentation converter rules are only
    registered once a segmentations module logic is attached to a scene; this class keeps
    that logic (and the application logic that saves and opens scene bundles) alive.

    Attributes
    ----------
    scene : vtkMRMLScene
    application_logic : vtkSlicerApplicationLogic
    """

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self._segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self._segmentations_logic.SetMRMLScene(self.scene)


# --- geometry and volumes ----------------------------------------------------------------

def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volume: Volume) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) = (x, y, z) of ``volume`` to RAS mm."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = volume.direction @ np.diag(list(reversed(volume.spacing)))
    ijk_to_lps[:3, 3] = volume.origin
    return RAS_FROM_LPS @ ijk_to_lps


def _node_ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _numpy_matrix(m)


def _image_array(image) -> np.ndarray:
    """Zero-copy [z, y, x] view of a vtkImageData's scalars over its extent."""
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _image_from_array(array: np.ndarray, image=None):
    """A vtkImageData (or the given subclass instance) holding a copy of ``array`` [z, y, x]."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _VTK_TYPES:
        array = array.astype(np.float32)
    image = image if image is not None else vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                         array_type=_VTK_TYPES[array.dtype])
    image.GetPointData().SetScalars(scalars)
    return image


def check_volume_node(node) -> None:
    """Raise InputError unless ``node`` is a 3D, single-component scalar volume node.

    The values are not looked at here (see :func:`volume_from_node`).
    """
    if node is None:
        raise InputError("no input volume selected: choose a CCTA volume")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{node.GetName()}' is a label map, not a CT image: "
                         "choose the CCTA scalar volume")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{node.GetName()}' is not a scalar volume: choose a CCTA volume")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{node.GetName()}' has no image data")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"'{node.GetName()}' is a 2D image ({dims[0]} x {dims[1]} x "
                         f"{dims[2]} voxels): AutoCAC needs a 3D CT volume")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                         "components per voxel (colour?): AutoCAC needs a grey-scale CT")


def volume_from_node(node, kvp: float | None = None, require_ct: bool = True) -> Volume:
    """An AutoCAC :class:`Volume` from a scalar volume node (the array is a view, no copy).

    Parameters
    ----------
    node : vtkMRMLScalarVolumeNode
        The CT. Its parent transform, if any, is ignored: results are put in the node's own
        frame and given the same parent transform.
    kvp : float, optional
        Tube voltage, when known from elsewhere (DICOM database); default: the node's
        ``AutoCAC.kVp`` attribute, if set.
    require_ct : bool
        Check that the values look like Hounsfield units.

    Raises
    ------
    InputError
        No node, a label map, not 3D, several components or (with ``require_ct``) not CT.
    """
    check_volume_node(node)
    if kvp is None and node.GetAttribute(KVP_ATTRIBUTE):
        kvp = float(node.GetAttribute(KVP_ATTRIBUTE))
    ijk_to_lps = RAS_FROM_LPS @ _node_ijk_to_ras(node)
    spacing_xyz = np.array(node.GetSpacing(), dtype=float)
    volume = Volume(_image_array(node.GetImageData()), tuple(reversed(spacing_xyz)),
                    tuple(ijk_to_lps[:3, 3]), ijk_to_lps[:3, :3] / spacing_xyz, kvp,
                    {"source_format": "mrml", "node_name": node.GetName()})
    if require_ct:
        check_is_ct(volume, f"volume '{node.GetName()}'")
    return volume


def volume_to_node(volume: Volume, scene, name: str = "CCTA"):
    """Add a scalar volume node holding a copy of ``volume`` to ``scene`` (kVp as attribute)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(_image_from_array(volume.array))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(volume)))
    if volume.kvp is not None:
        node.SetAttribute(KVP_ATTRIBUTE, f"{volume.kvp:g}")
    node.CreateDefaultDisplayNodes()
    return node


def _geometry_image(volume_node):
    """A vtkOrientedImageData with the grid of ``volume_node`` and no scalars."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume_node.GetImageData().GetExtent())
    image.SetImageToWorldMatrix(_vtk_matrix(_node_ijk_to_ras(volume_node)))
    return image


# --- segmentations ------------------------------------------------------------------------

def segment_terminology(segment) -> str:
    """The terminology entry string stored on a vtkSegment ("" when none)."""
    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def has_result(node) -> bool:
    """True when a segmentation or table node already holds something (segments, rows)."""
    if node is None:
        return False
    if node.IsA("vtkMRMLSegmentationNode"):
        return node.GetSegmentation().GetNumberOfSegments() > 0
    if node.IsA("vtkMRMLTableNode"):
        return node.GetNumberOfRows() > 0
    return False


def labels_to_segmentation(labels: np.ndarray, volume_node, segmentation_node) -> None:
    """Replace the content of ``segmentation_node`` by AutoCAC's segments from a label map.

    All segments of :data:`SEGMENTS` are created, empty ones included (so the user can paint
    into them), sharing one labelmap on the grid of ``volume_node``, with their names,
    colours and terminology.

    Parameters
    ----------
    labels : ndarray (z, y, x) of int
        Label map with the values of :data:`SEGMENTS` on the volume's grid.
    volume_node : vtkMRMLScalarVolumeNode
    segmentation_node : vtkMRMLSegmentationNode
    """
    dims = volume_node.GetImageData().GetDimensions()
    if tuple(labels.shape) != (dims[2], dims[1], dims[0]):
        raise ValueError(f"label map shape {labels.shape} differs from the volume "
                         f"({dims[2]}, {dims[1]}, {dims[0]})")
    shared = _image_from_array(np.asarray(labels, dtype=np.uint8), slicer.vtkOrientedImageData())
    shared.SetImageToWorldMatrix(_vtk_matrix(_node_ijk_to_ras(volume_node)))
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    segmentation.RemoveAllSegments()
    for spec in SEGMENTS:
        segment = slicer.vtkSegment()
        segment.SetName(spec.name)
        segment.SetColor(*spec.color)
        segment.SetLabelValue(spec.label)
        segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology())
        segment.AddRepresentation(BINARY_LABELMAP, shared)
        segmentation.AddSegment(segment, spec.name)
    segmentation_node.EndModify(was_modifying)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()


def labels_from_segmentation(segmentation_node, volume_node,
                             names: tuple[str, ...] | None = None) -> np.ndarray:
    """AutoCAC's label map on the grid of ``volume_node`` from a segmentation node.

    Segments are found by name; other segments are ignored and missing ones are empty.
    Where segments overlap (separate layers), calcium wins. The segmentation is not modified.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
    volume_node : vtkMRMLScalarVolumeNode
        Its grid is the grid of the result.
    names : tuple of str, optional
        Only these segments (default: all of :data:`SEGMENTS`).

    Returns
    -------
    ndarray (z, y, x) of uint8
    """
    dims = volume_node.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], dtype=np.uint8)
    for index, values in segment_voxels(segmentation_node, volume_node, names):
        out.flat[index] = values
    return out


def segment_voxels(segmentation_node, volume_node, names: tuple[str, ...] | None = None):
    """The voxels of AutoCAC's segments on the grid of ``volume_node``, sparsely.

    Returns
    -------
    list of (ndarray, ndarray)
        Chunks of (flat index into the volume's [z, y, x] array, label value), in the order
        in which they are to be written (calcium last).
    """
    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        raise InputError(f"segmentation '{segmentation_node.GetName()}' and volume "
                         f"'{volume_node.GetName()}' are under different transforms: "
                         "harden the transforms first")
    segmentation = segmentation_node.GetSegmentation()
    specs = [SEGMENT_BY_NAME[n] for n in (names or [s.name for s in SEGMENTS])]
    reference = _geometry_image(volume_node)
    ref_from_world = np.linalg.inv(_node_ijk_to_ras(volume_node))
    chunks = []
    for calcium_pass in (False, True):
        # Group the segments by the labelmap (layer) they live in: one pass per layer.
        layers: dict[str, tuple[object, list]] = {}
        for spec in specs:
            if spec.is_calcium != calcium_pass:
                continue
            segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
            if not segment_id:
                continue
            segment = segmentation.GetSegment(segment_id)
            image = segment.GetRepresentation(BINARY_LABELMAP)
            if image is None:
                raise InputError(f"segment '{spec.name}' has no binary labelmap: "
                                 "AutoCAC scores labelmap segments")
            key = image.GetAddressAsString("vtkOrientedImageData")
            layers.setdefault(key, (image, []))[1].append((segment.GetLabelValue(), spec.label))
        for image, values in layers.values():
            chunk = _layer_voxels(image, values, reference, ref_from_world)
            if chunk is not None:
                chunks.append(chunk)
    return chunks


def _layer_voxels(image, values, reference, ref_from_world):
    """(flat index, label) on the reference grid of segments ``values`` [(layer value, our
    label)] of one labelmap; None when there are none."""
    if image.GetPointData().GetScalars() is None:
        return None
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)
    transform = ref_from_world @ _numpy_matrix(to_world)
    offset = transform[:3, 3]
    aligned = (np.allclose(transform[:3, :3], np.eye(3), atol=1e-4)
               and np.allclose(offset, np.round(offset), atol=1e-3))
    if not aligned:
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, False)
        image, offset = resampled, np.zeros(3)
    e = np.array(image.GetExtent()).reshape(3, 2) + np.round(offset).astype(int)[:, None]
    size = np.array(reference.GetDimensions())
    lo, hi = np.maximum(e[:, 0], 0), np.minimum(e[:, 1], size - 1)
    if np.any(hi < lo):
        return None
    source = _image_array(image)[tuple(slice(lo[a] - e[a, 0], hi[a] - e[a, 0] + 1)
                                       for a in (2, 1, 0))]
    lut = np.zeros(max(v for v, _ in values) + 2, dtype=np.uint8)
    for layer_value, label in values:
        lut[layer_value] = label
    flat = source.reshape(-1)
    index = np.flatnonzero(flat)  # labelmaps are sparse: work on their voxels only
    labels = np.take(lut, flat[index], mode="clip")  # values above ours map to the final 0
    keep = labels > 0
    z, y, x = np.unravel_index(index[keep], source.shape)
    return (np.ravel_multi_index((z + lo[2], y + lo[1], x + lo[0]), tuple(size[::-1])),
            labels[keep])


# --- tables -------------------------------------------------------------------------------

def _set_title(table_node, column: str, title: str) -> None:
    if hasattr(table_node, "SetColumnTitle"):  # Slicer >= 5.6
        table_node.SetColumnTitle(column, title)
    else:
        table_node.SetColumnLongName(column, title)


def _fill_table(table_node, columns: list[tuple[str, str, str, str, list]]) -> None:
    """Replace a table node's content: columns of (name, vtk type, unit, title, values)."""
    makers = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    table = table_node.GetTable()
    for name, kind, unit, title, values in columns:
        array = makers[kind]()
        array.SetName(name)
        array.SetNumberOfValues(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, "" if value is None and kind == "string"
                           else float("nan") if value is None else value)
        table.AddColumn(array)
        table_node.SetColumnUnitLabel(name, unit)
        _set_title(table_node, name, title)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.Modified()
    table_node.EndModify(was_modifying)


def scores_to_table(scores: dict, table_node) -> None:
    """Write a score dictionary into a table node: rows LM, LAD, LCx, RCA, Total.

    Columns: Vessel, Agatston, Volume (mm3), Mass (mg, only when the scores have a mass),
    Lesions (only when they have lesion counts), Category and CAC-DRS (on the Total row).
    The whole dictionary is kept as JSON in the ``AutoCAC.Scores`` attribute.

    Parameters
    ----------
    scores : dict
        ``scores.json``'s shape: ``agatston`` and ``volume_mm3`` (dicts with keys LM, LAD,
        LCx, RCA, total), optionally ``mass_mg``, ``lesion_count``, ``category``,
        ``cac_drs``, ``status``, ``failure_reason``, ``warnings``, ``settings``.
    table_node : vtkMRMLTableNode
    """
    keys = list(VESSELS) + ["total"]

    def per_vessel(name):
        d = scores.get(name)
        return None if d is None else [d.get(k) for k in keys]

    columns = [("Vessel", "string", "", "Vessel", list(VESSELS) + ["Total"])]
    for name, label, unit, title in (("agatston", "Agatston", "AU", "Agatston score"),
                                     ("volume_mm3", "Volume", "mm3", "Calcium volume"),
                                     ("mass_mg", "Mass", "mg", "Calcium mass")):
        values = per_vessel(name)
        if values is not None:
            columns.append((label, "double", unit, title, values))
    counts = per_vessel("lesion_count")
    if counts is not None:
        columns.append(("Lesions", "int", "", "Lesion count",
                        [int(c) if c is not None else -1 for c in counts]))
    blank = [""] * len(VESSELS)
    columns.append(("Category", "string", "", "Risk category",
                    blank + [scores.get("category") or ""]))
    columns.append(("CAC-DRS", "string", "", "CAC-DRS", blank + [scores.get("cac_drs") or ""]))
    _fill_table(table_node, columns)
    table_node.SetAttribute(SCORES_ATTRIBUTE, json.dumps(scores))


def lesions_to_table(lesions: list[dict], table_node) -> None:
    """Write per-lesion results (``CalciumScore.lesions``) into a table node, one row each."""
    def col(key, cast):
        return [cast(les[key]) for les in lesions]

    _fill_table(table_node, [
        ("Vessel", "string", "", "Vessel", col("vessel", str)),
        ("Slice", "int", "", "First slice (k)", col("slice", int)),
        ("Area", "double", "mm2", "Largest cross-section area", col("area_mm2", float)),
        ("PeakHU", "double", "HU", "Peak attenuation", col("peak_hu", float)),
        ("Weight", "int", "", "Agatston density weight", col("weight", int)),
        ("Agatston", "double", "AU", "Agatston score", col("agatston", float)),
        ("Volume", "double", "mm3", "Calcium volume", col("volume_mm3", float)),
    ])


def scores_from_table(table_node) -> dict | None:
    """The score dictionary stored by :func:`scores_to_table` (None when there is none)."""
    text = table_node.GetAttribute(SCORES_ATTRIBUTE) if table_node is not None else None
    return json.loads(text) if text else None


# --- subject hierarchy --------------------------------------------------------------------

def place_beside(volume_node, node) -> None:
    """Put ``node`` under the same subject hierarchy parent (the study) as ``volume_node``.

    Does nothing when the volume has no subject hierarchy item (as in a bare headless scene).
    """
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    if not volume_item:
        return
    parent = sh.GetItemParent(volume_item)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(parent, node)
    sh.SetItemParent(item, parent)


# --- the module's scene logic -------------------------------------------------------------

def _calcium_crop(volume: Volume, chunks) -> tuple[Volume, np.ndarray, int]:
    """The part of ``volume`` around the calcium voxels, their label map there, and the
    index of its first slice (so that scoring touches only a few voxels). A volume stored as
    coronal or sagittal slices is kept whole (it is scored on its axial slices)."""
    if not chunks:
        return volume.with_array(volume.array[:1, :1, :1]), np.zeros((1, 1, 1), np.uint8), 0
    if axial_reorientation(volume.direction).slices_axial:
        zyx = np.unravel_index(np.concatenate([i for i, _ in chunks]), volume.shape)
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in zyx)
    else:
        box = tuple(slice(0, n) for n in volume.shape)
    labels = np.zeros([b.stop - b.start for b in box], dtype=np.uint8)
    for i, values in chunks:
        z, y, x = np.unravel_index(i, volume.shape)
        labels[z - box[0].start, y - box[1].start, x - box[2].start] = values
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    origin = np.asarray(volume.origin) + volume.direction @ (start_xyz * volume.spacing[::-1])
    crop = Volume(volume.array[box], volume.spacing, tuple(origin), volume.direction,
                  volume.kvp, volume.metadata)
    return crop, labels, box[0].start


@dataclass
class RunOutput:
    """Nodes written by :meth:`SceneLogic.run` and the scores they show."""

    segmentation: object
    table: object
    lesion_table: object | None
    scores: dict


def _default_pipeline(*args, **kwargs):
    from .pipeline import run_pipeline  # networks: imported only when a run is asked for

    return run_pipeline(*args, **kwargs)


class SceneLogic:
    """Run AutoCAC on a volume node and recompute scores from an edited segmentation.

    Parameters
    ----------
    scene : vtkMRMLScene
        Where the result nodes go.
    pipeline : callable, optional
        ``pipeline(volume, device=..., settings=..., progress=..., cancel=...)`` returning an
        object with ``labels`` (label map on the volume grid) and ``scores`` (dict of the
        ``scores.json`` contract). Default: :func:`AutoCACLib.pipeline.run_pipeline`,
        imported on first use.
    """

    def __init__(self, scene, pipeline: Callable | None = None):
        self.scene = scene
        self.pipeline = pipeline or _default_pipeline

    def _output(self, node, class_name: str, name: str, replace: bool, created: list):
        if node is not None and (replace or not has_result(node)):
            return node
        node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
        created.append(node)
        return node

    def run(self, volume_node, device: str = "auto", settings=None, segmentation_node=None,
            table_node=None, lesion_table: bool = True, replace: bool = False,
            kvp: float | None = None, progress: Callable | None = None,
            cancel: Callable | None = None) -> RunOutput | None:
        """Run the pipeline on ``volume_node`` and write segmentation and table nodes.

        Parameters
        ----------
        volume_node : vtkMRMLScalarVolumeNode
            The CCTA.
        device : {"auto", "cpu", "cuda"}
        settings : ScoringSettings, optional
            Scoring conventions, handed to the pipeline.
        segmentation_node, table_node : optional
            Output nodes to fill. A node that already holds a result is only replaced when
            ``replace`` is True; otherwise (and when None) a new node is created.
        lesion_table : bool
            Also write a per-lesion table (referenced from the score table).
        replace : bool
            Overwrite existing results in the given output nodes.
        kvp : float, optional
            Tube voltage when known (e.g. from the DICOM database).
        progress : callable, optional
            ``progress(stage_name, fraction)``.
        cancel : callable, optional
            Returns True to stop the run.

        Returns
        -------
        RunOutput or None
            None when cancelled; the scene is then unchanged.

        Raises
        ------
        InputError
            Unusable input; the scene is unchanged.
        """
        volume = volume_from_node(volume_node, kvp=kvp)
        try:
            result = self.pipeline(volume, device=device, settings=settings,
                                   progress=progress, cancel=cancel)
        except Exception:
            if cancel is not None and cancel():
                return None
            raise
        if cancel is not None and cancel():
            return None
        scores = {"kvp": volume.kvp, **result.scores}
        base = volume_node.GetName()
        created: list = []
        try:
            segmentation_node = self._output(segmentation_node, "vtkMRMLSegmentationNode",
                                             f"{base} AutoCAC", replace, created)
            labels_to_segmentation(np.asarray(result.labels), volume_node, segmentation_node)
            table_node = self._output(table_node, "vtkMRMLTableNode", f"{base} AutoCAC scores",
                                      replace, created)
            lesion_node = None
            if lesion_table:
                lesion_node = self._output(table_node.GetNodeReference(LESION_TABLE_ROLE),
                                           "vtkMRMLTableNode", f"{base} AutoCAC lesions",
                                           True, created)
            self._write_scores(scores, segmentation_node, table_node, lesion_node)
            for node in (segmentation_node, table_node, lesion_node):
                if node is not None:
                    place_beside(volume_node, node)
        except Exception:
            for node in created:
                self.scene.RemoveNode(node)
            raise
        return RunOutput(segmentation_node, table_node, lesion_node, scores)

    @staticmethod
    def _write_scores(scores, segmentation_node, table_node, lesion_node) -> None:
        scores_to_table(scores, table_node)
        table_node.SetNodeReferenceID(SEGMENTATION_ROLE, segmentation_node.GetID())
        if lesion_node is not None:
            lesions_to_table(scores.get("lesions") or [], lesion_node)
            table_node.SetNodeReferenceID(LESION_TABLE_ROLE, lesion_node.GetID())

    def recompute(self, table_node, segmentation_node=None, volume_node=None,
                  settings=None) -> dict:
        """Rescore the calcium segments of an (edited) segmentation into its tables.

        Only the scoring stage runs (:func:`AutoCACLib.scoring.score_labelmap`); the
        segmentation is read, never modified.

        Parameters
        ----------
        table_node : vtkMRMLTableNode
            The score table to refresh (its per-lesion table too, when it has one).
        segmentation_node : vtkMRMLSegmentationNode, optional
            Default: the one the table references.
        volume_node : vtkMRMLScalarVolumeNode, optional
            Default: the segmentation's reference volume.
        settings : ScoringSettings, optional
            Conventions (standard defaults when omitted).

        Returns
        -------
        dict
            The new scores, as written into the table.
        """
        from .scoring import score_labelmap

        if table_node is None:
            raise InputError("no score table selected: choose the table to update")
        segmentation_node = segmentation_node or table_node.GetNodeReference(SEGMENTATION_ROLE)
        if segmentation_node is None:
            raise InputError("no segmentation to score: choose the AutoCAC segmentation")
        volume_node = volume_node or segmentation_node.GetNodeReference(
            segmentation_node.GetReferenceImageGeometryReferenceRole())
        if volume_node is None:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no reference "
                             "volume: choose the CCTA volume")
        segmentation = segmentation_node.GetSegmentation()
        if not any(segmentation.GetSegmentIdBySegmentName(s.name) for s in SEGMENTS):
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no AutoCAC "
                             f"segments (such as {', '.join(CALCIUM_NAMES)})")
        previous = scores_from_table(table_node) or {}
        volume = volume_from_node(volume_node, kvp=previous.get("kvp"))
        volume, labels, z0 = _calcium_crop(
            volume, segment_voxels(segmentation_node, volume_node, CALCIUM_NAMES))
        if previous.get("method") == "ccta" and previous.get("calibration_factor"):
            # A pipeline result: rescore with the run's calibration-adapted thresholds.
            from .ccta_scoring import CctaScoringParams
            from .pipeline import ccta_score
            from .scoring import ScoringSettings

            params = CctaScoringParams(**previous.get("ccta_scoring_params", {}))
            new = ccta_score(volume, labels, settings or ScoringSettings(),
                             previous["calibration_factor"], params).to_dict()
        else:
            new = score_labelmap(volume, labels, settings).to_dict()
        for lesion in new["lesions"]:
            lesion["slice"] += z0
        # Keep what the pipeline said about the image (status, calibration, its warnings).
        warnings = list(dict.fromkeys(previous.get("warnings", []) + new["warnings"]))
        scores = {**previous, **new, "warnings": warnings, "recomputed": True}
        self._write_scores(scores, segmentation_node, table_node,
                           table_node.GetNodeReference(LESION_TABLE_ROLE))
        return scores
