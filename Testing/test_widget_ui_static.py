"""The widget without Slicer: every ``self.ui.<name>`` the module uses exists in the .ui with a class
that has what the code uses, every parameter-node binding has a compatible widget, and every name
the module imports from the Lib exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "PositionRegressionAD"
MODULE_FILE = MODULE_DIR / "PositionRegressionAD.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PositionRegressionAD.ui"

BUTTONS = {"QPushButton", "QCheckBox", "QToolButton", "QRadioButton"}
ANY_WIDGET = {"QWidget", "QLabel", "QProgressBar", "QComboBox", "QLineEdit", "ctkSliderWidget", "ctkPathLineEdit",
              "ctkCollapsibleButton", "qMRMLNodeComboBox", "qMRMLTableView", "QTextBrowser"} | BUTTONS
# What a member (property, method or signal) used on self.ui.<name> needs of the widget's class.
MEMBER_CLASSES: dict[str, set[str]] = {
    "enabled": ANY_WIDGET, "visible": ANY_WIDGET, "toolTip": ANY_WIDGET, "show": ANY_WIDGET, "hide": ANY_WIDGET,
    "text": {"QLabel", "QLineEdit", "ctkCollapsibleButton"} | BUTTONS,
    "value": {"QProgressBar", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "QSlider"},
    "checked": BUTTONS,
    "currentPath": {"ctkPathLineEdit"},
    "currentNode": {"qMRMLNodeComboBox"}, "setCurrentNode": {"qMRMLNodeComboBox"},
    "setMRMLTableNode": {"qMRMLTableView"},
    "sortFilterProxyModel": {"qMRMLNodeComboBox"},
    "clicked(bool)": BUTTONS, "toggled(bool)": BUTTONS,
    "currentNodeChanged(vtkMRMLNode*)": {"qMRMLNodeComboBox"},
    "valueChanged(double)": {"ctkSliderWidget", "QDoubleSpinBox"},
    "currentPathChanged(QString)": {"ctkPathLineEdit"},
}
# parameterNodeWrapper's GUI connectors: which widget classes can show a parameter of each type.
BINDING_CLASSES = {
    "bool": {"QCheckBox", "QPushButton"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "str": {"QLineEdit", "QTextEdit"},
    "choice": {"QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}


def _ui_widgets() -> dict[str, ElementTree.Element]:
    root = ElementTree.parse(UI_FILE).getroot()
    return {widget.get("name"): widget for widget in root.iter("widget")}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def _ui_member_uses(tree: ast.Module) -> dict[str, set[str]]:
    """{widget name: members used} for ``self.ui.<name>.<member>`` and ``.connect("signal", ...)``."""
    uses: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            continue
        uses.setdefault(node.attr, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui":
            uses[node.value.attr].add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" \
                and isinstance(node.func.value, ast.Attribute) and isinstance(node.func.value.value, ast.Attribute) \
                and node.func.value.value.attr == "ui" and node.args and isinstance(node.args[0], ast.Constant):
            uses[node.func.value.attr].add(node.args[0].value)
    for members in uses.values():
        members.discard("connect")
    return uses


def _parameter_fields(tree: ast.Module) -> dict[str, str]:
    """{field: kind} of the @parameterNodeWrapper class, kind as in BINDING_CLASSES."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            fields = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign):
                    fields[statement.target.id] = _kind(ast.unparse(statement.annotation))
            return fields
    raise AssertionError("no @parameterNodeWrapper class in the module file")


def _kind(annotation: str) -> str:
    if "vtkMRML" in annotation:
        return "node"
    if "Choice(" in annotation:
        return "choice"
    if "Path" in annotation:
        return "path"
    for kind in ("bool", "float", "int", "str"):
        if annotation == kind or annotation.startswith(f"Annotated[{kind},"):
            return kind
    raise AssertionError(f"unknown parameter type {annotation}")


def test_the_ui_file_is_a_qmrml_widget_with_declared_custom_widgets():
    root = ElementTree.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {name for name in used if name.startswith(("ctk", "qMRML"))}
    assert custom <= declared, f"custom widgets used but not declared: {custom - declared}"


def test_every_ui_name_the_module_uses_exists_with_a_compatible_class():
    widgets = _ui_widgets()
    uses = _ui_member_uses(_module_tree())
    assert len(uses) >= 10
    missing = sorted(set(uses) - set(widgets))
    assert not missing, f"self.ui names not in {UI_FILE.name}: {missing}"
    for name, members in uses.items():
        widget_class = widgets[name].get("class")
        for member in members:
            assert member in MEMBER_CLASSES, f"self.ui.{name}.{member}: add the member to MEMBER_CLASSES"
            assert widget_class in MEMBER_CLASSES[member], f"self.ui.{name} is a {widget_class}: no {member}"


def test_every_parameter_binding_has_a_compatible_widget():
    fields = _parameter_fields(_module_tree())
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = (name, widget.get("class"))
    assert set(bound) <= set(fields), f"bindings to unknown parameters: {set(bound) - set(fields)}"
    assert set(fields) <= set(bound), f"parameters without a widget: {set(fields) - set(bound)}"
    for parameter, (widget_name, widget_class) in bound.items():
        kind = fields[parameter]
        assert widget_class in BINDING_CLASSES[kind], f"{parameter} ({kind}) cannot bind to {widget_name} ({widget_class})"


def test_sliders_bound_to_floats_have_a_range():
    # parameterNodeWrapper refuses a ctkSliderWidget for an unbounded float.
    tree = _module_tree()
    source = MODULE_FILE.read_text()
    sliders = [w.findtext("property[@name='SlicerParameterName']/string") for w in _ui_widgets().values()
               if w.get("class") == "ctkSliderWidget"]
    assert sliders
    for parameter in sliders:
        assert f"{parameter}: Annotated[float, WithinRange(" in source, parameter
    assert tree is not None


def test_everything_the_module_imports_from_the_lib_exists():
    imported = []
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("PositionRegressionADLib"):
            module = importlib.import_module(node.module)
            imported += [(node.module, alias.name) for alias in node.names]
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
    assert len(imported) >= 8


def test_the_module_file_imports_without_slicer_application():
    module = importlib.import_module("PositionRegressionAD")
    assert module.ScriptedLoadableModule is None  # no Slicer app here: no module classes either
    assert module.DEVICE_CHOICES == ["auto", "cuda", "cpu"]


@pytest.mark.parametrize("widget_name", ["detectButton", "progressBar", "statusLabel", "scoresTableView",
                                         "jumpToMaxButton", "modelCardLabel", "deviceInfoLabel"])
def test_the_widgets_users_need_are_there(widget_name):
    assert widget_name in _ui_widgets()


def _load_module_file_with_slicer_stubs(monkeypatch, scene, tmp_path):
    """Import PositionRegressionAD.py as Slicer would, with stand-ins for the pieces slicer-core lacks
    (the application, Qt, ScriptedLoadableModule, parameterNodeWrapper) and ``slicer.mrmlScene`` set to ``scene``."""
    from slicer_gui_stubs import install_slicer_gui_stubs, load_module_file

    install_slicer_gui_stubs(monkeypatch, scene, MODULE_DIR, tmp_path)
    return load_module_file(MODULE_FILE, "PositionRegressionAD_in_slicer")


def test_the_module_self_test_passes_on_a_scene_like_slicers(monkeypatch, tmp_path):
    import unittest

    from PositionRegressionADLib.scene_io import SceneContext

    context = SceneContext.create(tmp_path / "cache")
    module = _load_module_file_with_slicer_stubs(monkeypatch, context.scene, tmp_path)
    for name in ("PositionRegressionAD", "PositionRegressionADWidget", "PositionRegressionADLogic",
                 "PositionRegressionADParameterNode"):
        assert hasattr(module, name), name
    suite = unittest.TestSuite([module.PositionRegressionADTest(name) for name in (
        "test_detection_adds_results_with_input_geometry", "test_failed_detection_leaves_scene_unchanged")])
    outcome = unittest.TextTestRunner(verbosity=0, stream=io.StringIO()).run(suite)
    assert outcome.testsRun == 2
    assert outcome.wasSuccessful(), outcome.failures + outcome.errors
