"""Detection on a synthetic head: the error map has exactly the input's grid; the CLI reports it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ppr.__main__ import main
from ppr.workflows.bundle import load_bundle, save_bundle
from ppr.config import PreprocessConfig
from ppr.workflows.detection import DetectOptions, detect
from ppr.errors import InputImageError
from ppr.networks.network import PPRNet
from ppr.image.preprocess import prepare_reference
from synthetic_heads import make_head_to_physical, oblique_direction, synthetic_head

CONFIG = PreprocessConfig(size=40, spacing_mm=6.0)
REGIONS = {"left_hemisphere", "right_hemisphere", "skull", "head"}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    reference = prepare_reference(synthetic_head(size=(80, 80, 36), spacing=(2.6, 2.6, 5.0)), CONFIG)
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    return save_bundle(path, PPRNet(m=2), CONFIG, reference, {"cases": ["synthetic"], "steps": 0})


@pytest.fixture(scope="module")
def scan() -> sitk.Image:
    """Oblique, anisotropic, off-centre, with a lesion: everything a grid can get wrong."""
    return synthetic_head(size=(70, 84, 30), spacing=(2.9, 2.5, 5.5), direction=oblique_direction((4.0, -3.0, 12.0)),
                          head_to_physical=make_head_to_physical((3.0, 0.0, 8.0), (15.0, -240.0, 300.0)),
                          lesion_center_mm=(25.0, 10.0, 20.0), lesion_radius_mm=12.0)


def test_error_map_has_exactly_the_input_geometry(bundle_path: Path, scan: sitk.Image) -> None:
    result = detect(scan, load_bundle(bundle_path), DetectOptions(stride=2, device="cpu", tile=16))
    errors = result.error_map_input
    assert errors.GetSize() == scan.GetSize()
    assert errors.GetOrigin() == scan.GetOrigin()
    assert errors.GetSpacing() == scan.GetSpacing()
    assert errors.GetDirection() == scan.GetDirection()
    assert errors.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayViewFromImage(errors)
    head = sitk.GetArrayViewFromImage(scan) > -500
    # The map lives on the head: positive inside, 0 in the air around it.
    assert np.median(values[head]) > 0
    assert np.percentile(values[~head], 50) == 0
    model = sitk.GetArrayViewFromImage(result.error_map_model)
    assert model.shape == (40, 40, 40)
    assert result.error_map_model.GetSpacing() == (6.0, 6.0, 6.0)
    assert set(result.regions) == REGIONS and all(v > 0 for v in result.regions.values())
    assert result.error_mm["max"] == pytest.approx(float(model.max()))
    assert set(result.seconds) >= {"preprocess", "error_map", "to_input_space", "scores"}


def test_cli_writes_the_map_and_one_json_line(bundle_path: Path, scan: sitk.Image, tmp_path: Path, capsys) -> None:
    source = tmp_path / "scan.nii.gz"
    sitk.WriteImage(scan, str(source))
    out = tmp_path / "errors.nii.gz"
    code = main(["detect", str(source), "--model", str(bundle_path), "--out", str(out), "--stride", "4",
                 "--device", "cpu", "--tile", "16", "--json", "--progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert {"seconds", "seconds_per_step", "device", "stride", "method", "error_mm", "regions", "max_error_lps",
            "registration_metric", "output"} <= set(report)
    assert report["stride"] == 4 and report["method"] == "dense" and report["device"] == "cpu"
    assert set(report["regions"]) == REGIONS
    assert report["registration_metric"] > 0.2
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == scan.GetSize()
    assert np.allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-3)
    assert np.allclose(written.GetDirection(), scan.GetDirection(), atol=1e-5)
    values = sitk.GetArrayViewFromImage(written)
    k, j, i = np.unravel_index(int(np.argmax(values)), values.shape)
    assert np.allclose(report["max_error_lps"], written.TransformIndexToPhysicalPoint((int(i), int(j), int(k))), atol=1e-2)
    progress = [line for line in captured.err.splitlines() if line.startswith("PROGRESS ")]
    fractions = [float(line.split()[1]) for line in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_single_slice_is_refused_before_any_inference(bundle_path: Path) -> None:
    slice_ = sitk.Image(64, 64, 1, sitk.sitkInt16)
    with pytest.raises(InputImageError):
        detect(slice_, load_bundle(bundle_path), DetectOptions(device="cpu"))


def test_cli_user_errors_exit_2_with_a_message(bundle_path: Path, tmp_path: Path, capsys) -> None:
    code = main(["detect", str(tmp_path / "missing.nii.gz"), "--model", str(bundle_path), "--out",
                 str(tmp_path / "e.nii.gz")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
