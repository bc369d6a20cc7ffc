"""Load a module file (PositionRegressionAD.py, PPRTraining.py) as Slicer would, without Qt, and drive its widget.

slicer-core gives the real MRML scene, ``slicer.util`` and ``VTKObservationMixin``; what only the Slicer
application has is stood in for here, as plainly as possible:

- ``qt`` / ``ctk``: widgets that keep the properties the code sets (text, enabled, visible, value ...),
  record ``connect`` and let a test ``click`` them; ``QTimer`` only says whether it was started.
- ``slicer.ScriptedLoadableModule``: the base classes (a widget has ``parent.isEntered``, ``layout``,
  ``resourcePath``); ``getParameterNode`` gives one parameter node per module and scene.
- ``slicer.parameterNodeWrapper``: fields with their defaults, stored on a vtkMRMLScriptedModuleNode
  so ``ModifiedEvent`` observers fire as in Slicer; ``connectGui`` / ``disconnectGui`` count links.
- ``slicer.util.tryWithErrorDisplay``: Slicer's behaviour (every tag since 5.0.3): shows the error
  (recorded in ``shown``), then re-raises it. ``errorDisplay`` / ``confirmOkCancelDisplay`` are recorded.
- ``slicer.app`` (processEvents, temporaryPath), ``slicer.modules.markups.logic()`` (slice jumps recorded),
  and ``PythonSlicer`` on PATH (this Python), as Slicer puts its own there.

A test then calls the widget's slots (``onDetectButton``, ``onTimer``, ``exit``, ``enter`` ...) and
reads what the user would see. Nothing here is used by the product.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import slicer

REPO_ROOT = Path(__file__).resolve().parents[1]


class FakeWidget:
    """Any Qt/CTK widget or layout: keeps what is set on it, records connections, ignores the rest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(text=args[0] if args and isinstance(args[0], str) else "", enabled=True,
                             visible=True, value=0, toolTip="", _slots={})

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None  # setRange, addWidget, addRow, setMRMLScene, ...

    def connect(self, signal: str, slot) -> None:
        self._slots[signal] = slot

    def click(self) -> None:
        """What a user's click does: nothing when the widget is disabled."""
        if self.enabled:
            slot = self._slots.get("clicked(bool)") or self._slots.get("clicked()")
            slot()

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setMRMLTableNode(self, node) -> None:
        self.tableNode = node

    def sortFilterProxyModel(self):
        if "proxy" not in self.__dict__:
            self.__dict__["proxy"] = types.SimpleNamespace(hiddenNodeIDs=[])
        return self.proxy


class FakeListWidget(FakeWidget):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["items"] = []

    @property
    def count(self) -> int:
        return len(self.items)

    def addItem(self, text: str) -> None:
        self.items.append(text)

    def item(self, index: int):
        return types.SimpleNamespace(text=lambda: self.items[index])


class FakeTimer(FakeWidget):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["active"] = False

    def start(self, *args: Any) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        self._slots["timeout()"]()


class GuiRecord:
    """What the stand-ins saw: errors shown, confirmations asked, slice jumps."""

    def __init__(self) -> None:
        self.shown: list[tuple[str | None, BaseException]] = []
        self.error_displays: list[str] = []
        self.confirm_answer = True
        self.confirmations: list[str] = []
        self.jumps: list[tuple] = []
        self.process_events: list[Any] = []


def _wrapper_module(record: GuiRecord) -> types.ModuleType:
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    values: dict[str, dict[str, Any]] = {}

    def parameterNodeWrapper(cls):
        defaults = {name: cls.__dict__.get(name) for name in cls.__annotations__}

        class Wrapped:
            def __init__(self, node) -> None:
                object.__setattr__(self, "parameterNode", node)
                object.__setattr__(self, "guiTags", set())
                stored = values.setdefault(node.GetID(), {})
                for name, default in defaults.items():
                    stored.setdefault(name, default)

            def __getattr__(self, name: str):
                if name in defaults:
                    return values[self.parameterNode.GetID()][name]
                raise AttributeError(name)

            def __setattr__(self, name: str, value) -> None:
                values[self.parameterNode.GetID()][name] = value
                self.parameterNode.Modified()

            def connectGui(self, gui) -> object:
                tag = object()
                self.guiTags.add(tag)
                return tag

            def disconnectGui(self, tag) -> None:
                self.guiTags.discard(tag)

            def AddObserver(self, event, callback, priority=0.0):
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag) -> None:
                self.parameterNode.RemoveObserver(tag)

        Wrapped.__name__ = cls.__name__
        return Wrapped

    wrapper.parameterNodeWrapper = parameterNodeWrapper
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    return wrapper


def _scripted_module(module_dir: Path) -> types.ModuleType:
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            name = type(self).__name__.removesuffix("Logic")
            node = slicer.mrmlScene.GetFirstNodeByName(name)
            if node is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", name)
            return node

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = FakeWidget()

        def setup(self) -> None:
            pass

        def resourcePath(self, name: str) -> str:
            return str(module_dir / "Resources" / name)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    return scripted


def _ui_names(ui_file: Path) -> list[str]:
    return [widget.get("name") for widget in ElementTree.parse(ui_file).getroot().iter("widget")]


def python_slicer_on_path(monkeypatch, folder: Path) -> None:
    """A ``PythonSlicer`` on PATH that is this Python, as Slicer puts its own on PATH."""
    folder.mkdir(exist_ok=True)
    script = folder / "PythonSlicer"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def install_slicer_gui_stubs(monkeypatch, scene, module_dir: Path, tmp_path: Path) -> GuiRecord:
    """Put the stand-ins in place (undone by ``monkeypatch``); ``slicer.mrmlScene`` becomes ``scene``,
    and a PythonSlicer (this Python) is on PATH in ``tmp_path/bin``."""
    record = GuiRecord()
    python_slicer_on_path(monkeypatch, tmp_path / "bin")
    qt = types.ModuleType("qt")
    for name in ("QPushButton", "QLabel", "QLineEdit", "QDoubleSpinBox", "QProgressBar", "QFormLayout",
                 "QHBoxLayout", "QWidget"):
        setattr(qt, name, FakeWidget)
    qt.QTimer = FakeTimer
    qt.QListWidget = FakeListWidget
    qt.QFileDialog = types.SimpleNamespace(getExistingDirectory=lambda *args: "")
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton = FakeWidget
    ctk.ctkPathLineEdit = type("ctkPathLineEdit", (FakeWidget,), {"Dirs": 1})

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        # Slicer's own behaviour: show the error, then raise it again.
        try:
            yield
        except Exception as error:
            record.shown.append((message, error))
            raise

    def loadUI(path):
        widget = FakeWidget()
        widget.__dict__["names"] = _ui_names(Path(path))
        return widget

    def childWidgetVariables(widget):
        return types.SimpleNamespace(**{name: FakeWidget() for name in widget.names})

    def confirm(text, *args, **kwargs):
        record.confirmations.append(text)
        return record.confirm_answer

    markups_logic = types.SimpleNamespace(JumpSlicesToLocation=lambda *args: record.jumps.append(args))
    app = types.SimpleNamespace(processEvents=lambda *args: record.process_events.append(args),
                                temporaryPath=str(tmp_path), setOverrideCursor=lambda *a: None,
                                restoreOverrideCursor=lambda *a: None)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", _wrapper_module(record))
    # Slicer's translation functions (slicer.i18n): no translator here, the English text.
    monkeypatch.setitem(sys.modules, "slicer.i18n", types.SimpleNamespace(tr=lambda text: text,
                                                                         translate=lambda context, text: text))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", _scripted_module(module_dir))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        markups=types.SimpleNamespace(logic=lambda: markups_logic)), raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)
    monkeypatch.setattr(slicer.util, "loadUI", loadUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", childWidgetVariables)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: record.error_displays.append(text))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    return record


def load_module_file(path: Path, name: str) -> types.ModuleType:
    """Import a module file under ``name`` (after ``install_slicer_gui_stubs``): its guarded classes exist."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
