"""Batch outputs per scan never collide and never leave ``--output`` (issue 13): two ``head.nii.gz``
from two folders keep their own error maps; ``...nii.gz`` and ``scores.csv.nii.gz`` get plain names."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PositionRegressionADLib.batch import BatchSettings, output_names, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
from synthetic_heads import synthetic_head

FAKE_CHILD = (sys.executable, "-m", "PositionRegressionADLib.testing")


def test_names_are_the_file_names_unless_they_clash_or_escape():
    scans = [Path("/d/site_a/head.nii.gz"), Path("/d/site_b/head.nii.gz"), Path("/d/site_a/ct_1.nrrd"),
             Path("/d/site_a/...nii.gz"), Path("/d/site_a/scores.csv.nii.gz"), Path("/d/site_a/mood.nii"),
             Path("/d/site_a/ct_1.nrrd")]
    assert output_names(scans) == ["site_a__head", "site_b__head", "ct_1", "scan", "scores.csv_scan",
                                   "mood_scan", "ct_1_2"]
    assert output_names(scans) == output_names(list(scans))  # stable
    assert output_names([Path("/d/site_a/head.nii.gz")]) == ["head"]


@pytest.mark.slow
def test_two_scans_of_one_name_in_two_folders_keep_their_own_results(tmp_path):
    scans = []
    for site, lesion in (("site_a", (25.0, 0.0, 20.0)), ("site_b", (-25.0, -10.0, 10.0))):
        (tmp_path / site).mkdir()
        image = synthetic_head(size=(56, 56, 28), spacing=(3.4, 3.6, 5.0), window_hu=(-20.0, 100.0),
                               lesion_center_mm=lesion)
        sitk.WriteImage(image, str(tmp_path / site / "head.nii.gz"))
        scans.append(tmp_path / site / "head.nii.gz")
    (tmp_path / "model").mkdir()
    output = tmp_path / "out"
    settings = BatchSettings(output_dir=output, options=DetectionOptions(model_path=tmp_path / "model"),
                             python_command=FAKE_CHILD)
    rows = run_batch(scans, settings, stream=io.StringIO())
    assert [row["Status"] for row in rows] == ["ok", "ok"], rows
    with (output / "scores.csv").open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["Scan"] for row in written] == ["site_a__head", "site_b__head"]
    maps = [Path(row["Error map"]) for row in written]
    assert maps[0] != maps[1] and all(output in path.parents for path in maps)
    first, second = (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in maps)
    assert not np.array_equal(first, second)  # each holds its own scan's map
    assert not list(output.rglob(".ppr-*"))  # no temporary file left
