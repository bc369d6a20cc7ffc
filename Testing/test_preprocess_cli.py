"""``python -m ppr preprocess``: writes the model-space volume and masks, prints one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from synthetic_heads import make_head_to_physical, oblique_direction, synthetic_head

STEPS = {"read", "validate", "resample", "register", "place", "intensity", "masks"}


def run_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppr", "preprocess", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_writes_volume_masks_and_json(tmp_path, repo_root):
    reference = tmp_path / "reference.nrrd"
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(synthetic_head(size=(80, 80, 40), spacing=(2.5, 2.5, 5.0)), str(reference))
    pose = make_head_to_physical((4.0, -3.0, 9.0), (5.0, 3.0, -4.0))
    moved = synthetic_head(size=(110, 110, 36), spacing=(1.8, 1.8, 5.0), direction=oblique_direction(),
                           head_to_physical=pose)
    sitk.WriteImage(moved, str(scan))
    output = tmp_path / "out" / "model.nii.gz"
    masks = tmp_path / "masks"
    completed = run_cli([str(scan), str(output), "--reference", str(reference), "--size", "72",
                         "--spacing", "3", "--window", "-20", "100", "--masks", str(masks), "--json",
                         "--progress"], repo_root)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["registration_metric"] > 0.25
    assert set(report["seconds"]) == STEPS and set(report["cpu_seconds"]) == STEPS
    assert report["total_seconds"] == sum(report["seconds"].values())
    transform = sitk.Euler3DTransform()
    transform.SetFixedParameters(report["transform"]["fixed_parameters"])
    transform.SetParameters(report["transform"]["parameters"])
    matrix = np.asarray(report["transform"]["matrix"])
    assert matrix.shape == (4, 4)
    point = np.array([10.0, -20.0, 30.0])
    assert np.allclose(matrix[:3, :3] @ point + matrix[:3, 3], transform.TransformPoint(point), atol=1e-6)
    # The transform found is the pose the scan was made with (model points = head frame points).
    assert np.linalg.norm(np.subtract(transform.TransformPoint(point), pose.TransformPoint(point))) < 1.5
    volume = sitk.ReadImage(str(output))
    assert volume.GetSize() == (72, 72, 72) and volume.GetSpacing() == (3.0, 3.0, 3.0)
    values = sitk.GetArrayFromImage(volume)
    assert values.min() == 0.0 and values.max() <= 1.0
    written = sorted(path.name for path in masks.iterdir())
    assert written == ["head_mask.nii.gz", "region_head.nii.gz", "region_left_hemisphere.nii.gz",
                       "region_right_hemisphere.nii.gz", "region_skull.nii.gz"]
    for name in written:
        mask = sitk.ReadImage(str(masks / name))
        assert mask.GetSize() == (72, 72, 72)
        assert np.allclose(mask.GetOrigin(), volume.GetOrigin())
        assert sitk.GetArrayViewFromImage(mask).max() == 1
    assert "PROGRESS 1.00 done" in completed.stderr


def test_cli_without_json_prints_one_line_and_no_equalize_is_linear(tmp_path, repo_root):
    reference = tmp_path / "reference.mha"
    sitk.WriteImage(synthetic_head(size=(80, 80, 40), spacing=(2.5, 2.5, 5.0)), str(reference))
    output = tmp_path / "model.nii.gz"
    completed = run_cli([str(reference), str(output), "--reference", str(reference), "--size", "64",
                         "--spacing", "3.5", "--no-equalize"], repo_root)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"wrote {output}")
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    # Linear window: brain (28-40 HU) maps to (HU + 20) / 120, i.e. 0.4-0.5.
    center = values[28:36, 28:36, 28:36]
    assert 0.38 < np.median(center) < 0.52


def test_cli_reports_a_missing_input_as_a_user_error(tmp_path, repo_root):
    completed = run_cli([str(tmp_path / "nope.nii.gz"), str(tmp_path / "o.nii.gz"),
                         "--reference", str(tmp_path / "nope.nii.gz")], repo_root)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and "does not exist" in completed.stderr
