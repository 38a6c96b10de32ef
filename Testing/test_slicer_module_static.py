"""Static checks of the Slicer module, without Slicer or Qt.

The panel (``Resources/UI/AutoCAC.ui``) binds widgets to the parameter node through the
``SlicerParameterName`` dynamic property; Slicer's parameterNodeWrapper only connects a
widget of a fitting class to a field of a fitting type. ``AutoCAC/AutoCAC.py`` is parsed
with :mod:`ast` (it imports ``qt``, which is not available here).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI = REPO / "Resources" / "UI" / "AutoCAC.ui"
MODULE = REPO / "AutoCAC" / "AutoCAC.py"

#: Widget classes that parameterNodeWrapper connects to each field type.
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget"},
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkDoubleSpinBox"},
    "choice": {"QComboBox", "ctkComboBox"},
}


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE.read_text())


@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI)  # raises on invalid XML


def parameter_fields(tree) -> dict[str, tuple[str, str]]:
    """{field: (kind, type name)} of the @parameterNodeWrapper class."""
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list))
    fields = {}
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        text = ast.unparse(stmt.annotation)
        base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", text)
        kind = ("choice" if "Choice(" in text else "node" if base.startswith("vtkMRML")
                else base)
        fields[stmt.target.id] = (kind, base)
    return fields


def bound_widgets(tree) -> dict[str, ET.Element]:
    out = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = widget
    return out


def test_ui_bindings_match_the_parameter_node(module_ast, ui_tree):
    fields = parameter_fields(module_ast)
    bound = bound_widgets(ui_tree)
    assert set(bound) == set(fields), "every field shown, every binding a field"
    for name, widget in bound.items():
        kind, type_name = fields[name]
        assert widget.get("class") in CONNECTABLE[kind], (name, widget.get("class"), kind)
        if kind == "node":
            types = [s.text for s in widget.iter("string")
                     if s.text and s.text.startswith("vtkMRML")]
            assert types == [type_name], name


def test_ui_widgets_used_by_the_module_exist(module_ast, ui_tree):
    names = {w.get("name") for w in ui_tree.iter("widget")}
    used = {node.attr for node in ast.walk(module_ast)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"}
    assert used and used <= names, used - names
    custom = {c.find("class").text for c in ui_tree.iter("customwidget")}
    slicer_classes = {w.get("class") for w in ui_tree.iter("widget")
                      if w.get("class").startswith(("qMRML", "ctk"))}
    assert slicer_classes <= custom


def test_module_loads_without_heavy_packages(module_ast):
    """Top-level imports are only what Slicer always has; AutoCACLib is imported lazily."""
    allowed = {"html", "importlib", "logging", "os", "sys", "typing", "qt", "slicer", "vtk"}
    for node in module_ast.body:
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {node.module.split(".")[0]}
        else:
            continue
        assert roots <= allowed, ast.unparse(node)


def test_module_metadata_and_classes(module_ast):
    classes = {n.name for n in module_ast.body if isinstance(n, ast.ClassDef)}
    assert {"AutoCAC", "AutoCACParameterNode", "AutoCACWidget", "AutoCACLogic",
            "AutoCACTest"} <= classes
    text = MODULE.read_text()
    assert '"Cardiac"' in text and "2023;10:143" in text and "Limits" in text


def test_extension_build_files_name_existing_files():
    top = (REPO / "CMakeLists.txt").read_text()
    assert "add_subdirectory(AutoCAC)" in top and "Slicer_EXTENSION_CPACK" in top
    module = (REPO / "AutoCAC" / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    for path in ("Resources/Icons/AutoCAC.png", "Resources/UI/AutoCAC.ui", "AutoCAC/AutoCAC.py"):
        assert (REPO / path).is_file(), path
    png = (REPO / "Resources/Icons/AutoCAC.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == bytes.fromhex("0000008000000080")
