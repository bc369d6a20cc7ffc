"""Issue 17: both real DICOM series go through the batch, the Lib and the web viewer's data folder,
placed by the project's reader (gantry tilt and uneven slices), not by ITK's even-spacing guess."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DEV_DATA_DIR
from PositionRegressionADLib.batch import find_scans, main as batch_main
from PositionRegressionADLib.geometry import ijk_to_ras, matrix_array
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADWeb.paths import list_scans, resolve_scan
from ppr.image.imageio import read_image

REAL_DICOM = DEV_DATA_DIR.parent / "real-hu-dicom"
pytestmark = pytest.mark.skipif(not (REAL_DICOM / "ge-tilt").is_dir(), reason="real DICOM series not available")


@pytest.fixture(scope="module")
def scans_folder(tmp_path_factory) -> Path:
    """A data folder as a user has it: a NIfTI file beside two DICOM series folders."""
    folder = tmp_path_factory.mktemp("scans")
    for series in ("ge-tilt", "invesalius-0051"):
        shutil.copytree(REAL_DICOM / series, folder / series)
    (folder / "notes.txt").write_text("not a scan\n")
    return folder


def test_batch_finds_series_folders_beside_files_and_a_series_named_directly(scans_folder):
    assert find_scans([scans_folder]) == [scans_folder / "ge-tilt", scans_folder / "invesalius-0051"]
    assert find_scans([scans_folder / "ge-tilt"]) == [scans_folder / "ge-tilt"]


def test_the_lib_loads_the_tilted_series_where_the_reader_places_it(scans_folder, tmp_path):
    image = read_image(scans_folder / "ge-tilt")
    node = load_volume(SceneContext.create(tmp_path), scans_folder / "ge-tilt")
    ras = matrix_array(ijk_to_ras(node))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected = lps_to_ras @ np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    assert np.allclose(ras[:3, :3], expected, atol=1e-6)
    assert np.allclose(ras[:3, 3], lps_to_ras @ np.asarray(image.GetOrigin()), atol=1e-4)
    voxels = node.GetImageData().GetDimensions()
    assert tuple(voxels) == image.GetSize()
    import slicer.util
    assert np.array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))


def test_the_web_viewer_lists_and_opens_series_folders(scans_folder):
    listed = list_scans(scans_folder)
    assert listed == ["ge-tilt", "invesalius-0051"]
    assert resolve_scan(scans_folder, "ge-tilt") == (scans_folder / "ge-tilt").resolve()


@pytest.mark.slow
def test_a_batch_over_both_real_series_scores_them(scans_folder, tmp_path):
    out = tmp_path / "results"
    code = batch_main(["--input", str(scans_folder), "--output", str(out), "--stride", "4", "--device", "cpu"])
    assert code == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = {row["Scan"]: row for row in csv.DictReader(handle)}
    assert rows.pop("notes.txt")["Status"] == "skipped"  # the folder's other file: a row that says so
    assert set(rows) == {"ge-tilt", "invesalius-0051"}
    for name, row in rows.items():
        assert row["Status"] == "ok", row
        error_map = sitk.ReadImage(str(out / name / "error_map.nii.gz"))
        assert error_map.GetSize() == read_image(scans_folder / name).GetSize()
