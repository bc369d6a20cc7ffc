"""Batch (issue 13): a scan that fails on a re-run leaves no map of the earlier run looking current,
and files an input folder holds that are not scans (or are label maps) get a "skipped" row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PositionRegressionADLib import batch


def _rows(output: Path) -> dict[str, dict[str, str]]:
    with (output / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return {row["Scan"]: row for row in csv.DictReader(handle)}


def _folder(tmp_path: Path) -> Path:
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "head_a.nii.gz").write_bytes(b"no longer a NIfTI file" * 10)  # became unreadable since the last run
    mask = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))
    for name in ("head_a_mask.nii.gz", "head_a_label.nrrd", "Head_A_Seg.nii"):
        sitk.WriteImage(mask, str(scans / name))
    (scans / "notes.txt").write_text("not a scan")
    (scans / "report").mkdir()  # a folder without a DICOM series
    (scans / ".hidden.nii.gz").write_bytes(b"")
    return scans


def test_a_rerun_that_fails_removes_the_earlier_results_and_skipped_files_get_rows(tmp_path, capsys, tiny_bundle):
    scans = _folder(tmp_path)
    output = tmp_path / "out"
    # What an earlier run left: head_a's maps and MOOD files, and another scan's results.
    for folder in ("head_a", "head_b"):
        (output / folder).mkdir(parents=True)
        (output / folder / "error_map.nii.gz").write_bytes(b"earlier run")
    (output / "mood").mkdir()
    for name in ("head_a.nii.gz", "head_a.nii.gz.txt", "head_b.nii.gz"):
        (output / "mood" / name).write_bytes(b"earlier run")

    code = batch.main(["--input", str(scans), "--output", str(output), "--model", str(tiny_bundle),
                       "--format", "mood"])
    err = capsys.readouterr().err

    assert code == 1
    rows = _rows(output)
    assert set(rows) == {"head_a", "head_a_mask.nii.gz", "head_a_label.nrrd", "Head_A_Seg.nii", "notes.txt", "report"}
    failed = rows["head_a"]
    assert failed["Status"] == "failed" and "could not be read as an image" in failed["Reason"]
    assert "the results of an earlier run of this scan were removed" in failed["Reason"]
    assert failed["Error map"] == ""
    assert not (output / "head_a").exists()
    assert sorted(p.name for p in (output / "mood").iterdir()) == ["head_b.nii.gz"]
    assert (output / "head_b" / "error_map.nii.gz").read_bytes() == b"earlier run"  # not this run's scan
    for name in ("head_a_mask.nii.gz", "head_a_label.nrrd", "Head_A_Seg.nii"):
        assert rows[name]["Status"] == "skipped" and "label map" in rows[name]["Reason"], rows[name]
        assert rows[name]["Input"] == str((scans / name).resolve())
    for name in ("notes.txt", "report"):
        assert rows[name]["Status"] == "skipped" and rows[name]["Reason"].startswith("not a scan")
    assert "skipped notes.txt: not a scan" in err
    assert "0 of 1 scans done; 5 file(s) skipped" in err


def test_a_label_map_named_on_the_command_line_is_a_scan(tmp_path):
    scans = _folder(tmp_path)
    assert batch.find_inputs([scans / "head_a_mask.nii.gz"]) == ([scans / "head_a_mask.nii.gz"], [])
    found, skipped = batch.find_inputs([scans])
    assert found == [scans / "head_a.nii.gz"]
    assert [path.name for path, _ in skipped] == [
        "Head_A_Seg.nii", "head_a_label.nrrd", "head_a_mask.nii.gz", "notes.txt", "report"]


def test_nothing_to_remove_gives_no_removal_note(tmp_path):
    settings = batch.BatchSettings(output_dir=tmp_path / "out", options=None)
    assert not batch.remove_results(settings, tmp_path / "never.nii.gz", "never")
