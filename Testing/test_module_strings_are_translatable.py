"""What the module files show a user goes through Slicer's translation function (``slicer.i18n.tr``
imported as ``_``), so Qt's lupdate finds it and a language pack can translate it; f-strings, which
lupdate cannot extract, are not shown. Test code (delayDisplay) and file names are exempt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODULE_FILES = ("PositionRegressionAD/PositionRegressionAD.py", "PPRTraining/PPRTraining.py")
# Calls whose text arguments a user reads: dialogs, panel status, buttons, form rows, errors.
SHOWN = {"tryWithErrorDisplay", "confirmOkCancelDisplay", "errorDisplay", "not_started", "succeeded",
         "cancelled", "note", "progress", "QPushButton", "addRow", "getExistingDirectory", "RuntimeError",
         "ValueError"}
SHOWN_ATTRIBUTES = {"text", "toolTip", "placeholderText", "suffix", "title", "helpText", "acknowledgementText"}


def _is_user_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)
                                               and node.value.strip() != "")


def _untranslated(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in SHOWN:
                found += [f"line {arg.lineno}: {name}(...)" for arg in node.args if _is_user_text(arg)]
        elif isinstance(node, ast.Assign) and _is_user_text(node.value):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in SHOWN_ATTRIBUTES:
                    found.append(f"line {node.lineno}: .{target.attr} = ...")
    return found


@pytest.mark.parametrize("module_file", MODULE_FILES)
def test_every_shown_text_goes_through_the_translation_function(repo_root: Path, module_file: str):
    tree = ast.parse((repo_root / module_file).read_text(encoding="utf-8"))
    assert _untranslated(tree) == []


def test_the_check_finds_untranslated_text():
    tree = ast.parse('slicer.util.errorDisplay("Failed")\nbox.text = f"{n} scans"\nok = _("Fine")\n')
    assert sorted(_untranslated(tree)) == ["line 1: errorDisplay(...)", "line 2: .text = ..."]
