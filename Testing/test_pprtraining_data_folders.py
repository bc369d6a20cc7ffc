"""Which files of the user's folders become training and validation scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_dicom import write_ct_series

from ppr.errors import PPRError
from PPRTrainingLib.data_folders import images_in_folders
from PPRTrainingLib.logic import PPRTrainingLogic


def make_folder(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"")
    return folder


def test_volumes_and_dicom_series_are_found_and_label_maps_skipped(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "healthy", [
        "c.nii.gz", "a.NII", "b.nrrd", "d.mha", "e.mhd", "e.raw", "f_ich_mask.nii.gz", "g_seg.nrrd",
        "labelmap.nii.gz", "notes.txt", "empty_dir/", "other/readme.md", "not_dicom/1.dcm",
    ])
    # A real (tiny) DICOM series: a folder is a scan when GDCM finds a series in it, whatever the
    # file names; empty files named .dcm are not one.
    write_ct_series(folder / "series1", [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0)], (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                    lambda points: np.zeros(points.shape[:-1]), shape=(4, 4), spacing=(1.0, 1.0))
    found = [path.name for path in images_in_folders([folder])]
    assert found == ["a.NII", "b.nrrd", "c.nii.gz", "d.mha", "e.mhd", "series1"]


def test_custom_exclusions_replace_the_default(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "healthy", ["a.nii.gz", "a_mask.nii.gz", "old_b.nii.gz"])
    assert [p.name for p in images_in_folders([folder], exclude=["old_*"])] == ["a.nii.gz", "a_mask.nii.gz"]


def test_folders_keep_their_order_and_a_folder_named_twice_counts_once(tmp_path: Path) -> None:
    second = make_folder(tmp_path / "second", ["z.nii.gz"])
    first = make_folder(tmp_path / "first", ["y.nii.gz", "x.nii.gz"])
    found = images_in_folders([second, first, tmp_path / "first"])
    assert [p.name for p in found] == ["z.nii.gz", "x.nii.gz", "y.nii.gz"]


def test_missing_folder_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(PPRError, match="does not exist") as error:
        images_in_folders([tmp_path / "nowhere"])
    assert str(tmp_path / "nowhere") in str(error.value)


def test_folder_without_images_is_named_in_the_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "masks_only", ["a_mask.nii.gz", "notes.txt"])
    with pytest.raises(PPRError, match="No head CT images found") as error:
        images_in_folders([folder])
    assert str(folder) in str(error.value) and "*mask*" in str(error.value)


def test_validation_scans_must_not_be_training_scans(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "healthy", ["a.nii.gz", "b.nii.gz"])
    with pytest.raises(PPRError, match="2 validation scan"):
        PPRTrainingLogic().request_from_folders([folder], tmp_path / "bundle", validation_folders=[folder])


def test_no_training_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PPRError, match="No training data folder"):
        PPRTrainingLogic().request_from_folders([], tmp_path / "bundle")


def test_dev_data_folder_gives_every_scan_and_no_mask(dev_data_dir: Path) -> None:
    import csv

    with open(dev_data_dir / "cases.csv", newline="") as table:
        cases = sorted(row["case"] for row in csv.DictReader(table))
    found = images_in_folders([dev_data_dir])
    assert [p.name for p in found] == [f"{case}.nii.gz" for case in cases]
