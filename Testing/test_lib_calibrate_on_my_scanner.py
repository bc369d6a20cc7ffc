"""The module's "Calibrate on my scanner" without Qt: ``CalibrationLogic`` runs ``ppr calibrate FOLDER
--out NEW`` as a child (here in this process, same parser and exit codes), reads its report, and the
panel's state goes idle -> running -> done with the new bundle, or failed / cancelled with nothing
written; what would be refused is refused before a child starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from PositionRegressionADLib.calibration_logic import (
    CALIBRATION_STRIDE,
    CalibrationFailedError,
    CalibrationLogic,
    CalibrationPanel,
    CalibrationRequest,
    default_output_folder,
)
from PositionRegressionADLib.run_state import Phase
from PositionRegressionADLib.testing import InProcessFakeDetection
from ppr.__main__ import main as ppr_main
from ppr.workflows.bundle import load_bundle
from ppr.errors import InputImageError
from test_calibrate_on_my_scanner_writes_a_new_bundle import my_scans  # noqa: F401 - the fixture


class InProcessPPR(InProcessFakeDetection):
    """Runs the command's real ``python -m ppr ...`` in this process when first polled."""

    def _main(self) -> int:
        return ppr_main(self._command[self._command.index("ppr") + 1:])


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "model"))


def test_the_command_runs_ppr_calibrate_into_a_new_folder(tmp_path: Path) -> None:
    request = CalibrationRequest(tmp_path / "model", tmp_path / "scans", tmp_path / "new", device="cpu")
    command = CalibrationLogic(python_command=["python"]).command(request)
    assert command == ["python", "-m", "ppr", "calibrate", str(tmp_path / "model"), str(tmp_path / "scans"),
                       "--out", str(tmp_path / "new"), "--device", "cpu", "--stride", str(CALIBRATION_STRIDE),
                       "--json", "--progress"]
    assert default_output_folder(Path("/m/ppr-ctich-default"), Path("/data/my-scanner")) == \
        Path("/data/ppr-ctich-default-my-scanner")


@pytest.mark.slow  # one calibration on three small scans with the tiny bundle (~15 s on 2 shared cores)
def test_the_panel_calibrates_a_folder_and_hands_over_the_new_bundle(bundle: Path, my_scans: Path,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    panel = CalibrationPanel(CalibrationLogic(launcher=InProcessPPR))
    assert panel.state.view().action_text == "Calibrate on my scanner" and panel.state.view().can_start
    panel.click(bundle, str(my_scans), "", "cpu")
    assert panel.running and panel.state.phase is Phase.RUNNING
    assert panel.state.view().action_text == "Cancel calibration"
    outcome = None
    while outcome is None and panel.running:
        outcome = panel.tick()
    expected = default_output_folder(bundle, my_scans)
    assert outcome.bundle_path == expected and outcome.n_scans == 3
    assert outcome.case_names == ("ctich_056", "ctich_057", "ctich_111_top160")
    assert panel.state.phase is Phase.DONE and str(expected) in panel.state.view().status
    assert load_bundle(expected).calibration.n_scans == 3
    assert not (bundle / "calibration.npz").exists()  # the model it started from is unchanged

    # The same output again is refused before any child starts (it is no longer empty).
    with pytest.raises(InputImageError, match="already exists and is not empty"):
        panel.click(bundle, str(my_scans), str(expected), "cpu")
    assert not panel.running


def test_a_refused_folder_fails_and_a_cancel_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    two = tmp_path / "two-scans"
    two.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (two / name).write_bytes(b"")
    panel = CalibrationPanel(CalibrationLogic(launcher=InProcessPPR))
    panel.click(bundle, str(two), str(tmp_path / "new"), "cpu")
    with pytest.raises(CalibrationFailedError, match=r"at least 3 healthy scans, got 2 \(a, b\)"):
        panel.tick()
    assert not panel.running and not (tmp_path / "new").exists()

    panel = CalibrationPanel(CalibrationLogic(launcher=InProcessPPR))
    panel.click(bundle, str(two), str(tmp_path / "new"), "cpu")
    panel.click(bundle, str(two), str(tmp_path / "new"), "cpu")  # the second click cancels
    assert panel.state.phase is Phase.CANCELLING
    assert panel.tick() is None and panel.state.phase is Phase.CANCELLED and not panel.running
    assert not (tmp_path / "new").exists()

    with pytest.raises(InputImageError, match="Choose the folder that holds your healthy scans"):
        panel.click(bundle, "", "", "cpu")
