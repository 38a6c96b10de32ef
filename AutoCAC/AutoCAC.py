"""AutoCAC: automated coronary artery calcium scoring on contrast CCTA, as a Slicer module.

The module is thin: the computation is in the ``AutoCACLib`` package (numpy arrays in, label
maps and scores out) and every conversion between MRML nodes and arrays is in
``AutoCACLib.slicer_bridge``. Heavy packages (torch, xgboost, scikit-image) and the
``AutoCACLib`` modules that need them are imported inside functions, so the module loads
before they are installed; they are installed on first use after asking the user.
"""

import html
import importlib.util
import logging
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Where AutoCACLib and Resources/ may be: beside this file (installed extension) or one
#: folder up (this file loaded from a source checkout).
_ROOTS = (os.path.dirname(os.path.abspath(__file__)),
          os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _root in _ROOTS:
    if os.path.isdir(os.path.join(_root, "AutoCACLib")):
        if _root not in sys.path:
            sys.path.insert(0, _root)
        break

#: Python packages the pipeline needs beyond Slicer's own (import name: pip requirement).
#: torch is installed through the PyTorch extension when it is present.
PIPELINE_REQUIREMENTS = {"skimage": "scikit-image>=0.22", "xgboost": "xgboost>=2.0"}


def resourcePath(relativePath: str) -> str:
    """Absolute path of a file under ``Resources/`` (installed or source layout)."""
    for root in _ROOTS:
        path = os.path.join(root, "Resources", relativePath)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(relativePath)


#
# AutoCAC
#


class AutoCAC(ScriptedLoadableModule):
    """The module's description for Slicer's module list, help and self-test."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AutoCAC")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = ["Segmentations", "Tables"]
        self.parent.contributors = ["AutoCAC developers"]
        self.parent.helpText = _("""
Automated coronary artery calcium (CAC) scoring on a contrast-enhanced, ECG-gated coronary
CT angiogram (CCTA), so that no separate non-contrast calcium-scoring CT is needed.
<p>The method follows Lee, Park, Park and Lee, "Deep Learning-Based Automated Quantification
of Coronary Artery Calcification for Contrast-Enhanced Coronary Computed Tomographic
Angiography", J. Cardiovasc. Dev. Dis. 2023;10:143: vessel-enhancing preprocessing, neural
segmentation of the coronary tree (LM, LAD, LCx, RCA) and of the ascending aorta, a lumen
calibration from the aorta, an adaptive calcium threshold along the vessel centerlines, and
Agatston, volume and mass scores per vessel with the risk category (0, 1-10, 11-100,
101-400, &gt;400).</p>
<p><b>Run</b> writes an editable segmentation and a score table. Correct the calcium
segments in Segment Editor (paint, erase, or move a lesion to another vessel's segment),
then press <b>Recompute scores</b>: only the scoring runs, the segmentation is not
changed.</p>
<p><b>Limits:</b> research software, not a medical device. Calcium scores from CCTA are
estimates of the non-contrast score and tend to be lower (volume more than Agatston), most
at 80 kVp. Motion artefacts, thick slices, poor contrast or a field of view that cuts the
heart make a case fail; the status area says why. Check the calcium segments before using
a score.</p>
""")
        self.parent.acknowledgementText = _("""
AutoCAC reimplements the method published by Lee et al. (J. Cardiovasc. Dev. Dis.
2023;10:143). It is built on 3D Slicer and its scripted-module template.
""")
        try:
            self.parent.icon = qt.QIcon(resourcePath("Icons/AutoCAC.png"))
        except FileNotFoundError:
            logging.warning("AutoCAC icon not found")


#
# AutoCACParameterNode
#


@parameterNodeWrapper
class AutoCACParameterNode:
    """The module's choices, saved with the scene.

    inputVolume - the CCTA.
    device - where the networks run.
    outputSegmentation, outputTable - result nodes (None: create new ones).
    lesionTable - also write a per-lesion table.
    thresholdHU, connectivity, lesionDim, minAreaMm2, minAreaPixels, kvpSpecific,
    massCalibration - scoring conventions (``AutoCACLib.scoring.ScoringSettings``);
    0 means "none" for minAreaPixels and massCalibration.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    lesionTable: bool = True
    thresholdHU: Annotated[float, WithinRange(50.0, 1000.0)] = 130.0
    connectivity: Annotated[int, Choice([8, 4])] = 8
    lesionDim: Annotated[str, Choice(["2d", "3d"])] = "2d"
    minAreaMm2: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    minAreaPixels: Annotated[int, WithinRange(0, 1000)] = 0
    kvpSpecific: bool = False
    massCalibration: Annotated[float, WithinRange(0.0, 10.0)] = 0.0


#
# AutoCACWidget
#


class AutoCACWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, outputs, scoring conventions, Run, Recompute and a status area."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it to the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/AutoCAC.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AutoCACLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.recomputeButton.connect("clicked(bool)", self.onRecomputeButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens another module."""
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Observe the module's parameter node; select the first CT volume if none is."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            for volumeNode in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                    self._parameterNode.inputVolume = volumeNode
                    break

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the panel to ``inputParameterNode`` (None: disconnect)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.ui.runButton.enabled = bool(p and p.inputVolume)
        self.ui.runButton.toolTip = (_("Segment the coronary arteries and their calcium, then score.")
                                     if self.ui.runButton.enabled else _("Select the CCTA volume."))
        self.ui.recomputeButton.enabled = bool(p and p.outputTable and p.outputTable.GetNumberOfRows())
        self.ui.recomputeButton.toolTip = (
            _("Score the calcium segments again after editing them; the segmentation is not changed.")
            if self.ui.recomputeButton.enabled else _("Run AutoCAC first (or select its score table)."))

    def _setStatus(self, html_text: str) -> None:
        self.ui.statusLabel.text = html_text

    def _runGuarded(self, failureMessage: str, action) -> None:
        """Run ``action``: input problems go to the status area, other errors to a dialog."""
        from AutoCACLib.errors import InputError

        with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
            try:
                action()
            except InputError as error:
                self._setStatus('<span style="color:#c00000"><b>{}</b> {}</span>'.format(
                    html.escape(_("Cannot run:")), html.escape(str(error))))

    def onRunButton(self) -> None:
        """Run the whole pipeline, with a cancellable progress dialog."""
        self._runGuarded(_("AutoCAC failed."), self._run)

    def _run(self) -> None:
        from AutoCACLib.slicer_bridge import check_volume_node, has_result

        p = self._parameterNode
        check_volume_node(p.inputVolume)
        replace = False
        if has_result(p.outputSegmentation) or has_result(p.outputTable):
            replace = slicer.util.confirmYesNoDisplay(
                _("The selected output already holds a result (and perhaps your edits).\n"
                  "Replace it? Choose No to write the new result to new nodes."),
                windowTitle=_("AutoCAC"))
        if not self.logic.ensurePipelineDependencies():
            self._setStatus(html.escape(_("Not run: the required Python packages are not installed.")))
            return
        dialog = slicer.util.createProgressDialog(windowTitle=_("AutoCAC"), labelText=_("Starting..."),
                                                  maximum=100, autoClose=False)

        def progress(stage: str, fraction: float) -> None:
            dialog.labelText = _("AutoCAC: {stage}").format(stage=stage)
            dialog.value = int(round(100 * max(0.0, min(1.0, fraction))))
            slicer.app.processEvents()

        try:
            out = self.logic.run(p.inputVolume, segmentationNode=p.outputSegmentation,
                                 tableNode=p.outputTable, device=p.device,
                                 settings=self.logic.scoringSettings(p), lesionTable=p.lesionTable,
                                 replace=replace, progress=progress, cancel=lambda: dialog.wasCanceled)
        finally:
            dialog.close()
        if out is None:
            self._setStatus(html.escape(_("Cancelled: the scene was not changed.")))
            return
        p.outputSegmentation = out.segmentation
        p.outputTable = out.table
        self._setStatus(statusHtml(out.scores))

    def onRecomputeButton(self) -> None:
        """Score the edited calcium segments again; the segmentation is not touched."""
        self._runGuarded(_("Recompute failed."), self._recompute)

    def _recompute(self) -> None:
        p = self._parameterNode
        scores = self.logic.recompute(p.outputTable, segmentationNode=p.outputSegmentation,
                                      settings=self.logic.scoringSettings(p))
        self._setStatus(statusHtml(scores))


def statusHtml(scores: dict) -> str:
    """Status-area text of a score dictionary: category, quality control and warnings."""
    lines = []
    if scores.get("status", "ok") == "ok":
        lines.append("<b>{}</b> {}".format(html.escape(_("Quality control:")), html.escape(_("passed"))))
    else:
        lines.append('<span style="color:#c00000"><b>{}</b> {}</span>'.format(
            html.escape(_("Quality control: failed.")), html.escape(scores.get("failure_reason") or "")))
    total = (scores.get("agatston") or {}).get("total")
    if total is not None:
        lines.append("<b>{}</b> {} &nbsp; <b>{}</b> {:.1f} &nbsp; <b>{}</b> {}".format(
            html.escape(_("Category:")), html.escape(str(scores.get("category", ""))),
            html.escape(_("Agatston:")), total, html.escape(_("CAC-DRS:")),
            html.escape(str(scores.get("cac_drs", "")))))
    if scores.get("recomputed"):
        lines.append(html.escape(_("Scores recomputed from the edited segmentation.")))
    warnings = scores.get("warnings") or []
    if warnings:
        lines.append("<b>{}</b><ul>{}</ul>".format(
            html.escape(_("Warnings:")), "".join(f"<li>{html.escape(w)}</li>" for w in warnings)))
    return "<br>".join(lines)


#
# AutoCACLogic
#


class AutoCACLogic(ScriptedLoadableModuleLogic):
    """Run AutoCAC and recompute scores; usable from Python without the panel.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        Default: ``slicer.mrmlScene``.
    pipeline : callable, optional
        Replaces ``AutoCACLib.pipeline.run_pipeline`` (same signature); for tests.
    """

    def __init__(self, scene=None, pipeline=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.pipeline = pipeline

    def getParameterNode(self):
        return AutoCACParameterNode(super().getParameterNode())

    def _sceneLogic(self):
        from AutoCACLib.slicer_bridge import SceneLogic

        return SceneLogic(self.scene, pipeline=self.pipeline)

    @staticmethod
    def scoringSettings(parameterNode):
        """``ScoringSettings`` from the panel's conventions."""
        from AutoCACLib.scoring import ScoringSettings

        p = parameterNode
        return ScoringSettings(threshold_hu=p.thresholdHU, connectivity=p.connectivity,
                               lesion_dim=p.lesionDim, min_area_mm2=p.minAreaMm2,
                               min_area_pixels=p.minAreaPixels or None, kvp_specific=p.kvpSpecific,
                               mass_calibration=p.massCalibration or None)

    @staticmethod
    def missingPipelinePackages() -> list:
        """pip requirements of the pipeline that are not installed ("torch" included)."""
        missing = [req for name, req in PIPELINE_REQUIREMENTS.items()
                   if importlib.util.find_spec(name) is None]
        if importlib.util.find_spec("torch") is None:
            missing.append("torch")
        return missing

    def ensurePipelineDependencies(self, askConfirmation: bool = True) -> bool:
        """Install missing pipeline packages after asking; False when the user declines."""
        missing = self.missingPipelinePackages()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("AutoCAC needs these Python packages: {packages}.\n"
                  "Download and install them now? This can take several minutes.").format(
                    packages=", ".join(missing)), windowTitle=_("AutoCAC")):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                missing.remove("torch")
                self._installTorch()
            if missing:
                slicer.util.pip_install(missing)
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ImportError:  # no PyTorch extension: the default (CPU or CUDA) wheel from PyPI
            slicer.util.pip_install("torch")
            return
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError(_("PyTorch could not be installed."))

    @staticmethod
    def kvpFromDicom(volumeNode):
        """Tube voltage (0018,0060) of a volume loaded from Slicer's DICOM database, or None."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        value = database.fileValue(database.fileForInstance(uids[0]), "0018,0060")
        try:
            return float(value)
        except ValueError:
            return None

    def run(self, volumeNode, segmentationNode=None, tableNode=None, device="auto", settings=None,
            lesionTable=True, replace=False, progress=None, cancel=None, showResult=True):
        """Run AutoCAC on a CCTA volume node.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
        segmentationNode, tableNode : optional
            Outputs; a node that already holds a result is replaced only with ``replace``,
            otherwise new nodes are created.
        device : {"auto", "cpu", "cuda"}
        settings : AutoCACLib.scoring.ScoringSettings, optional
        lesionTable : bool
            Also write a per-lesion table.
        replace : bool
        progress : callable, optional
            ``progress(stage_name, fraction)``.
        cancel : callable, optional
            Returns True to stop.
        showResult : bool
            Show the segmentation in the views and the table in the layout.

        Returns
        -------
        AutoCACLib.slicer_bridge.RunOutput or None
            None when cancelled (the scene is then unchanged).
        """
        kvp = self.kvpFromDicom(volumeNode) if volumeNode is not None else None
        out = self._sceneLogic().run(volumeNode, device=device, settings=settings,
                                     segmentation_node=segmentationNode, table_node=tableNode,
                                     lesion_table=lesionTable, replace=replace, kvp=kvp,
                                     progress=progress, cancel=cancel)
        if out is not None and showResult:
            self.showResult(volumeNode, out.segmentation, out.table)
        return out

    def recompute(self, tableNode, segmentationNode=None, settings=None) -> dict:
        """Rescore the calcium segments into the score table (and its lesion table)."""
        return self._sceneLogic().recompute(tableNode, segmentation_node=segmentationNode,
                                            settings=settings)

    @staticmethod
    def showResult(volumeNode, segmentationNode, tableNode) -> None:
        """Volume in the slice views, segmentation in 2D and 3D, the table in the layout."""
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        segmentationNode.CreateClosedSurfaceRepresentation()
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()


#
# AutoCACTest
#


class AutoCACTest(ScriptedLoadableModuleTest):
    """The headless pytest scenarios, inside Slicer, on a small synthetic case.

    The networks are replaced by a test double that returns the case's known label map.
    Expected scores are worked out by hand: pixel area 0.5 x 0.6 = 0.3 mm2, slices 1.5 mm
    (Agatston x 1.5 / 3).
    """

    PIXEL_MM2 = 0.3

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_RunWritesResults, self.test_RecomputeAfterEdits,
                     self.test_RerunKeepsEditedResult, self.test_BadInputs,
                     self.test_SceneSaveAndLoad, self.test_PanelBinding):
            self.setUp()
            test()

    # -- helpers ---------------------------------------------------------------------------

    class _KnownLabelsPipeline:
        """Test double for the CCTA pipeline: returns a fixed label map and its scores."""

        def __init__(self, labels):
            self.labels = labels

        def __call__(self, volume, device="auto", settings=None, progress=None, cancel=None):
            from types import SimpleNamespace

            from AutoCACLib.scoring import score_labelmap

            if progress:
                progress("test double", 1.0)
            scores = score_labelmap(volume, self.labels, settings).to_dict()
            scores.update(status="ok", failure_reason=None, warnings=[])
            return SimpleNamespace(labels=self.labels.copy(), scores=scores)

    def _case(self):
        """A synthetic CT node, its label map and a logic using the test double."""
        import numpy as np

        from AutoCACLib import slicer_bridge
        from AutoCACLib.segments import CALCIUM_LABEL
        from AutoCACLib.volume import Volume

        image = np.full((12, 40, 48), 40.0, dtype=np.float32)
        image[:, :, :6] = -1000.0
        labels = np.zeros(image.shape, dtype=np.uint8)
        image[2, 10:12, 10:13] = 320.0  # LM: 6 px, weight 3
        labels[2, 9:13, 9:14] = CALCIUM_LABEL["LM"]
        image[4, 20:23, 20:23] = 450.0  # LAD: 9 px, weight 4
        labels[4, 19:24, 19:24] = CALCIUM_LABEL["LAD"]
        image[7, 30:34, 8:10] = 180.0  # RCA: 8 px, weight 1
        labels[7, 29:35, 7:11] = CALCIUM_LABEL["RCA"]
        image[9, 14:17, 36:39] = 350.0  # not in any segment: 9 px, weight 3
        volume = Volume(image, (1.5, 0.5, 0.6), origin=(-12.5, 30.0, -800.0), kvp=100.0)
        node = slicer_bridge.volume_to_node(volume, slicer.mrmlScene, "CCTA")
        return node, labels, AutoCACLogic(pipeline=self._KnownLabelsPipeline(labels))

    def _rows(self, tableNode):
        table = tableNode.GetTable()
        return {table.GetValueByName(r, "Vessel").ToString():
                (table.GetValueByName(r, "Agatston").ToDouble(), table.GetValueByName(r, "Lesions").ToInt())
                for r in range(table.GetNumberOfRows())}

    def _setSegment(self, segmentationNode, volumeNode, name, mask):
        import numpy as np
        from vtk.util import numpy_support

        image = slicer.vtkOrientedImageData()
        image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
            np.asarray(mask, dtype=np.uint8).ravel()
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        image.SetImageToWorldMatrix(matrix)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    # -- scenarios -------------------------------------------------------------------------

    def test_RunWritesResults(self):
        self.delayDisplay("Run writes segmentation and score table")
        node, labels, logic = self._case()
        out = logic.run(node, showResult=False)
        segmentation = out.segmentation.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 9)
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Calcium LAD"))
        from AutoCACLib.segments import SEGMENT_BY_NAME
        from AutoCACLib.slicer_bridge import segment_terminology

        self.assertEqual(segment_terminology(segment), SEGMENT_BY_NAME["Calcium LAD"].terminology())
        rows = self._rows(out.table)
        self.assertAlmostEqual(rows["LM"][0], 6 * self.PIXEL_MM2 * 3 * 0.5, places=4)
        self.assertAlmostEqual(rows["LAD"][0], 9 * self.PIXEL_MM2 * 4 * 0.5, places=4)
        self.assertAlmostEqual(rows["RCA"][0], 8 * self.PIXEL_MM2 * 1 * 0.5, places=4)
        self.assertEqual(rows["Total"], (rows["LM"][0] + rows["LAD"][0] + rows["RCA"][0], 3))
        self.assertEqual(out.table.GetColumnUnitLabel("Volume"), "mm3")

    def test_RecomputeAfterEdits(self):
        self.delayDisplay("Recompute after erase and paint")
        import numpy as np

        from AutoCACLib.slicer_bridge import labels_from_segmentation

        node, labels, logic = self._case()
        out = logic.run(node, showResult=False)
        before = self._rows(out.table)
        self._setSegment(out.segmentation, node, "Calcium RCA", np.zeros(labels.shape, bool))
        painted = np.zeros(labels.shape, bool)
        painted[9, 14:17, 36:39] = True
        self._setSegment(out.segmentation, node, "Calcium LCx", painted)
        edited = labels_from_segmentation(out.segmentation, node)
        logic.recompute(out.table)
        after = self._rows(out.table)
        self.assertEqual(after["LM"], before["LM"])
        self.assertEqual(after["LAD"], before["LAD"])
        self.assertEqual(after["RCA"], (0.0, 0))
        self.assertAlmostEqual(after["LCx"][0], 9 * self.PIXEL_MM2 * 3 * 0.5, places=4)
        self.assertEqual(after["LCx"][1], 1)
        self.assertTrue((labels_from_segmentation(out.segmentation, node) == edited).all())

    def test_RerunKeepsEditedResult(self):
        self.delayDisplay("Running again does not overwrite an edited result")
        import numpy as np

        node, labels, logic = self._case()
        first = logic.run(node, showResult=False)
        self._setSegment(first.segmentation, node, "Calcium RCA", np.zeros(labels.shape, bool))
        second = logic.run(node, segmentationNode=first.segmentation, tableNode=first.table,
                           showResult=False)
        self.assertNotEqual(second.segmentation.GetID(), first.segmentation.GetID())
        self.assertNotEqual(second.table.GetID(), first.table.GetID())
        from AutoCACLib.slicer_bridge import labels_from_segmentation
        from AutoCACLib.segments import CALCIUM_LABEL

        self.assertFalse((labels_from_segmentation(first.segmentation, node) == CALCIUM_LABEL["RCA"]).any())

    def test_BadInputs(self):
        self.delayDisplay("Bad inputs leave the scene unchanged")
        import numpy as np

        from AutoCACLib import slicer_bridge
        from AutoCACLib.errors import InputError
        from AutoCACLib.volume import Volume

        node, labels, logic = self._case()
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        labelNode.SetAndObserveImageData(node.GetImageData())
        flat = slicer_bridge.volume_to_node(Volume(np.zeros((1, 8, 8)), (1, 1, 1)), slicer.mrmlScene, "flat")
        mr = slicer_bridge.volume_to_node(Volume(np.linspace(0, 900, 512).reshape(8, 8, 8), (1, 1, 1)),
                                          slicer.mrmlScene, "MR")
        for bad in (None, labelNode, flat, mr):
            count = slicer.mrmlScene.GetNumberOfNodes()
            with self.assertRaises(InputError):
                logic.run(bad, showResult=False)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)

    def test_SceneSaveAndLoad(self):
        self.delayDisplay("Segments, terminology and scores survive saving the scene")
        from AutoCACLib.segments import SEGMENTS
        from AutoCACLib.slicer_bridge import SEGMENTATION_ROLE, scores_from_table, segment_terminology

        node, labels, logic = self._case()
        out = logic.run(node, showResult=False)
        rows = self._rows(out.table)
        tableName = out.table.GetName()
        path = os.path.join(slicer.app.temporaryPath, "AutoCACTest.mrb")
        self.assertTrue(slicer.util.saveScene(path))
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(path)
        table = slicer.util.getNode(tableName)
        self.assertEqual(self._rows(table), rows)
        self.assertEqual(scores_from_table(table)["status"], "ok")
        segmentation = table.GetNodeReference(SEGMENTATION_ROLE).GetSegmentation()
        for spec in SEGMENTS:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(spec.name))
            self.assertEqual(segment_terminology(segment), spec.terminology())
        os.remove(path)

    def test_PanelBinding(self):
        self.delayDisplay("Panel widgets follow the parameter node")
        node, labels, logic = self._case()
        widget = slicer.util.getModuleWidget("AutoCAC")
        widget.initializeParameterNode()
        parameterNode = widget.logic.getParameterNode()
        parameterNode.inputVolume = node
        parameterNode.thresholdHU = 200.0
        parameterNode.connectivity = 4
        self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), node)
        self.assertEqual(widget.ui.thresholdSpinBox.value, 200.0)
        self.assertEqual(widget.ui.connectivityComboBox.currentText, "4")
        self.assertTrue(widget.ui.runButton.enabled)
        self.assertEqual(logic.scoringSettings(parameterNode).connectivity, 4)
