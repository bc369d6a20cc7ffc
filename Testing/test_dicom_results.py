"""Results as DICOM (issue 16): ``ppr detect IN_DICOM_FOLDER ... --dicom-out DIR`` and
``ppr.workflows.dicom_results.write_dicom_results``.

On the real series of ``real-hu-dicom``: a Parametric Map of the shown map, a Segmentation of the
anomaly candidates and a TID 1500 report, read back with pydicom and highdicom: their SOP classes,
the source's study and frame of reference, every source instance referenced, the segmentation equal
to the candidates labelmap voxel for voxel on the input grid, the map's values (uint16 through the
Real World Value Mapping) equal to the NIfTI map's within half a quantisation step, its 0 exactly,
and its quantity the map's: the anomaly map's local code (99PPR "ANOMALY", unit "1"), the position
z-map's Z-score, the error map's mm. The writer is checked on synthetic maps on the untilted series' grid
(seconds); one detection at stride 4 on the gantry-tilted series (``ge-tilt``, ~40 s) checks the
command end to end and that the objects lie on the resampled grid, not on the tilted source slices.
A NIfTI input with ``--dicom-out`` is refused before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "PositionRegressionAD"
MODEL = PACKAGE_DIR / "Resources" / "Models" / "ppr-ctich-default"
REAL_DICOM = Path(os.environ.get("PPR_REAL_DICOM_DIR", REPO_ROOT.parent / "shared" / "data" / "real-hu-dicom"))
UNTILTED = REAL_DICOM / "invesalius-0051"
TILTED = REAL_DICOM / "ge-tilt"

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
# invesalius-0051's own UIDs have a leading zero in a component: pydicom says so on every read.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _series(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"real DICOM series not found at {folder}")
    return folder


def _sources(folder: Path) -> list:
    from ppr.image.imageio import dicom_series_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's own header (a UID with a leading zero)
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(folder)]


def _geometry(image: sitk.Image):
    """The highdicom geometry of a SimpleITK grid (frames = its z, rows = its y, columns = its x)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return hd.VolumeGeometry.from_components(image.GetSize()[::-1], spacing=image.GetSpacing()[::-1],
                                             coordinate_system="PATIENT", position=image.GetOrigin(),
                                             direction=direction[:, ::-1])


def _on_grid(volume, image: sitk.Image) -> np.ndarray:
    """A read-back highdicom volume as an array (z, y, x) on the SimpleITK grid (no resampling: only
    axis flips, crops and pads; a position off by more than 1 % of a voxel fails)."""
    return volume.match_geometry(_geometry(image), tol=0.01).array


def _segmentation_labels(path: Path, image: sitk.Image) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        segmentation = hd.seg.segread(path)
        numbers = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
        if all("none found" in item.SegmentLabel for item in segmentation.SegmentSequence):
            numbers = []
        if not numbers:
            return np.zeros(image.GetSize()[::-1], np.uint16)
        volume = segmentation.get_volume(combine_segments=True, relabel=False)
    return _on_grid(volume, image).astype(np.uint16)


def _map_values(path: Path, image: sitk.Image) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        volume = hd.image.imread(path).get_volume()  # applies the Real World Value Mapping
    return _on_grid(volume, image)


def _mapping(path: Path):
    return pydicom.dcmread(path, stop_before_pixels=True).SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]


def _check_within_half_a_step(path: Path, values: np.ndarray, expected: np.ndarray) -> None:
    """The read-back ``values`` are the NIfTI map's within half a quantisation step (the mapping's slope;
    float64 rounding aside), the map's 0 exactly; the pixels are uint16 (no float pixel data)."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    assert (dataset.BitsAllocated, dataset.PixelRepresentation) == (16, 0)
    assert "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset
    slope = float(_mapping(path).RealWorldValueSlope)
    assert values.shape == expected.shape
    assert np.max(np.abs(values - expected.astype(np.float64))) <= slope / 2 * (1 + 1e-9)
    assert np.all(values[expected == 0] == 0)


def _check_references(dataset, sources: list) -> None:
    source = sources[0]
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.PatientID == source.get("PatientID", "")
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID
                  for series in dataset.ReferencedSeriesSequence if series.SeriesInstanceUID == source.SeriesInstanceUID
                  for item in series.ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}


# ---------------------------------------------------------------------------------------------
# The writer on synthetic maps on a real series' grid (no detection: seconds)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two blobs above threshold, one small one below the minimum volume, on invesalius-0051's grid."""
    from ppr.image.imageio import read_image
    from ppr.workflows.dicom_results import ShownMap, candidates_image, write_dicom_results

    folder = _series(UNTILTED)
    image = read_image(folder)
    k, j, i = np.indices(image.GetSize()[::-1], dtype=np.float32)
    spacing = image.GetSpacing()
    centre = np.array(image.GetSize()[::-1]) // 2

    def blob(offset, radius_mm, height):
        d2 = (((k - centre[0] - offset[0]) * spacing[2]) ** 2 + ((j - centre[1] - offset[1]) * spacing[1]) ** 2
              + ((i - centre[2] - offset[2]) * spacing[0]) ** 2)
        return height * np.exp(-d2 / (2 * radius_mm ** 2))

    errors = (20.0 + blob((0, 0, 0), 9.0, 60.0) + blob((5, -90, 70), 6.0, 45.0) + blob((-20, 60, -60), 1.0, 80.0))
    errors = errors.astype(np.float32)
    errors[:, :40] = 0.0  # outside the head
    error_map = sitk.GetImageFromArray(errors)
    error_map.CopyInformation(image)
    shown = ShownMap(error_map, "mm", 50.0)
    candidates = candidates_image(shown)
    regions = {"left_hemisphere": 31.5, "right_hemisphere": 28.25, "skull": None, "head": 40.0}
    out = tmp_path_factory.mktemp("dicom") / "out"
    paths = write_dicom_results(folder, out, error_map, "mm", candidates, regions, threshold=50.0)
    return {"folder": folder, "image": image, "map": error_map, "candidates": candidates, "regions": regions,
            "out": out, "paths": paths}


def test_writer_writes_the_three_objects_of_the_source_study_and_frame_of_reference(synthetic):
    from ppr.workflows.dicom_results import dicom_result_paths

    assert synthetic["paths"] == dicom_result_paths(synthetic["out"])
    assert sorted(p.name for p in synthetic["out"].iterdir()) == sorted(p.name for p in synthetic["paths"])
    sources = _sources(synthetic["folder"])
    pm, seg, sr = (pydicom.dcmread(p) for p in synthetic["paths"])
    assert (pm.SOPClassUID, seg.SOPClassUID, sr.SOPClassUID) == (PARAMETRIC_MAP, SEGMENTATION, COMPREHENSIVE_3D_SR)
    for dataset in (pm, seg):
        assert dataset.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        _check_references(dataset, sources)
        assert len(dataset.SourceImageSequence) == len(sources)
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {s.SOPInstanceUID for s in sources} | {pm.SOPInstanceUID, seg.SOPInstanceUID} <= evidence


def test_segmentation_equals_the_candidates_labelmap_voxel_for_voxel(synthetic):
    labels = sitk.GetArrayFromImage(synthetic["candidates"])
    assert labels.max() == 2  # the two blobs; the small third one is under the minimum volume
    assert np.array_equal(_segmentation_labels(synthetic["paths"][1], synthetic["image"]), labels)
    seg = pydicom.dcmread(synthetic["paths"][1], stop_before_pixels=True)
    assert [item.SegmentLabel.split(":")[0] for item in seg.SegmentSequence] == ["Anomaly candidate 1",
                                                                                  "Anomaly candidate 2"]


def test_parametric_map_holds_the_map_in_mm_within_half_a_step(synthetic):
    mapping = _mapping(synthetic["paths"][0])
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "PPRERROR"
    expected = sitk.GetArrayFromImage(synthetic["map"])
    # min 0, max ~80 mm: 0..65535 spread over it, 0 at 0.
    assert float(mapping.RealWorldValueIntercept) == 0.0
    assert float(mapping.RealWorldValueSlope) == pytest.approx(float(expected.max()) / 65535, rel=1e-9)
    _check_within_half_a_step(synthetic["paths"][0], _map_values(synthetic["paths"][0], synthetic["image"]), expected)


@pytest.mark.parametrize("shown_map, code, scheme, unit", [("anomaly", "ANOMALY", "99PPR", "1"),
                                                           ("position z", "113071", "DCM", "{z-score}")])
def test_the_quantity_is_the_shown_maps(synthetic, tmp_path, shown_map, code, scheme, unit):
    """The anomaly map is z-like but no z-score: a local code, unit "1"; the position z-map a Z-score.
    The position z-map has negative values: the intercept takes them, and its 0 stays exactly 0."""
    from ppr.workflows.dicom_results import write_dicom_results

    errors = sitk.GetArrayFromImage(synthetic["map"])
    z = np.where(errors > 0, (errors - 30.0) / 8.0, 0.0).astype(np.float32)  # about -1.3 .. 7.5, 0 outside
    if shown_map == "anomaly":
        z = np.maximum(z, 0.0)
    z_map = sitk.GetImageFromArray(z)
    z_map.CopyInformation(synthetic["map"])
    paths = write_dicom_results(synthetic["folder"], tmp_path, z_map, "z", synthetic["candidates"], None,
                                threshold=3.7, shown_map=shown_map)
    mapping = _mapping(paths[0])
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (quantity.CodeValue, quantity.CodingSchemeDesignator) == (code, scheme)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == unit
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    if shown_map == "anomaly":
        assert quantity.CodeMeaning == "Anomaly map (density z raised by position z)"
        assert "z-score" not in str(pydicom.dcmread(paths[0], stop_before_pixels=True)).lower()
    else:
        assert z.min() < 0 and float(mapping.RealWorldValueIntercept) < 0  # 0 on the grid, not at stored 0
    _check_within_half_a_step(paths[0], _map_values(paths[0], synthetic["image"]), z)


def test_the_shown_map_must_fit_the_unit(synthetic, tmp_path):
    from ppr.workflows.dicom_results import write_dicom_results

    for unit, shown_map in (("z", "none"), ("mm", "anomaly"), ("z", "anomaly map")):
        with pytest.raises(ValueError, match="shown_map"):
            write_dicom_results(synthetic["folder"], tmp_path / "out", synthetic["map"], unit,
                                synthetic["candidates"], shown_map=shown_map)
    assert not (tmp_path / "out").exists()


def test_report_holds_one_measurement_per_scored_region(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.srread(synthetic["paths"][2])
    found = {}
    for item in _walk(sr.ContentSequence):
        if item.ValueType == "NUM":
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            found[name.split(" anomaly score")[0]] = float(item.MeasuredValueSequence[0].NumericValue)
            assert item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert found == {name: value for name, value in synthetic["regions"].items() if value is not None}


def _walk(sequence):
    for item in sequence:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_a_failed_write_leaves_none_of_the_final_names(synthetic, tmp_path, monkeypatch):
    from ppr.errors import OutputFileError
    from ppr.workflows import dicom_results

    real_save = pydicom.Dataset.save_as
    calls = []

    def failing_save(self, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 3:  # the report: the map and the segmentation are already in place
            raise OSError(28, "No space left on device")
        return real_save(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    out = tmp_path / "out"
    with pytest.raises(OutputFileError):
        dicom_results.write_dicom_results(synthetic["folder"], out, synthetic["map"], "mm", synthetic["candidates"],
                                          synthetic["regions"])
    assert len(calls) == 3
    assert list(out.iterdir()) == []  # neither final names nor temporary files


def test_no_candidate_gives_one_empty_segment(synthetic, tmp_path):
    from ppr.workflows.dicom_results import write_dicom_results

    empty = sitk.Image(synthetic["candidates"].GetSize(), sitk.sitkUInt16)
    empty.CopyInformation(synthetic["candidates"])
    paths = write_dicom_results(synthetic["folder"], tmp_path, synthetic["map"], "mm", empty, None)
    assert [p.name for p in paths] == ["anomaly_map_pm.dcm", "anomaly_candidates_seg.dcm"]
    seg = pydicom.dcmread(paths[1], stop_before_pixels=True)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Anomaly candidate (none found)"]
    assert not np.any(pydicom.dcmread(paths[1]).pixel_array)


def test_writer_refuses_a_nifti_input_and_another_grid(synthetic, tmp_path):
    from ppr.errors import InputImageError
    from ppr.workflows.dicom_results import write_dicom_results

    nifti = tmp_path / "scan.nii.gz"
    sitk.WriteImage(synthetic["map"], str(nifti))
    with pytest.raises(InputImageError, match="DICOM output needs a DICOM input"):
        write_dicom_results(nifti, tmp_path / "out", synthetic["map"], "mm", synthetic["candidates"])
    shifted = sitk.Image(synthetic["candidates"])
    shifted.SetOrigin(tuple(v + 1.0 for v in shifted.GetOrigin()))
    with pytest.raises(ValueError, match="grid"):
        write_dicom_results(synthetic["folder"], tmp_path / "out", synthetic["map"], "mm", shifted)
    assert not (tmp_path / "out").exists()


def test_candidates_are_the_slicer_modules_regions():
    """ppr's candidate labels equal VTK's connectivity filter as the module used it (size rank, ties in
    scan order, face neighbours, small regions dropped, the largest ``max_count`` kept)."""
    vtk = pytest.importorskip("vtk")
    from scipy import ndimage
    from vtk.util import numpy_support

    from ppr.statistics.candidates import candidate_labels

    rng = np.random.default_rng(7)
    for _ in range(12):
        shape = tuple(int(v) for v in rng.integers(6, 24, 3))
        values = (ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 5).astype(np.float32)
        threshold, spacing, min_volume, max_count = float(rng.uniform(0.2, 1.2)), (1.0, 1.0, 2.0), 5.0, 6
        image = vtk.vtkImageData()
        image.SetDimensions(shape[2], shape[1], shape[0])
        image.SetSpacing(*spacing)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.ravel(), deep=True))
        regions = vtk.vtkImageConnectivityFilter()
        regions.SetInputData(image)
        regions.SetScalarRange(threshold, 1e30)
        regions.SetExtractionModeToAllRegions()
        regions.SetSizeRange(int(np.ceil(min_volume / np.prod(spacing))), vtk.VTK_ID_MAX)
        regions.SetLabelModeToSizeRank()
        regions.SetLabelScalarTypeToUnsignedShort()
        regions.Update()
        expected = numpy_support.vtk_to_numpy(regions.GetOutput().GetPointData().GetScalars()).reshape(shape)
        count = min(regions.GetNumberOfExtractedRegions(), max_count)
        expected = np.where(expected <= count, expected, 0)
        assert np.array_equal(candidate_labels(values, spacing, threshold, min_volume, max_count), expected)


# ---------------------------------------------------------------------------------------------
# The command: a NIfTI input is refused; a gantry-tilted series end to end


def _ppr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR)}
    return subprocess.run([sys.executable, "-m", "ppr", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=900)


def test_detect_refuses_dicom_output_for_a_nifti_input(tmp_path):
    nifti = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkInt16), str(nifti))
    run = _ppr("detect", str(nifti), "--model", str(MODEL), "--out", str(tmp_path / "map.nii.gz"),
               "--dicom-out", str(tmp_path / "dicom"))
    assert run.returncode != 0
    assert "DICOM output needs a DICOM input (a folder of the series)" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]  # nothing written


@pytest.fixture(scope="module")
def tilted_detection(tmp_path_factory):
    """``ppr detect ge-tilt --stride 4 --dicom-out`` with the bundled (calibrated) model, once."""
    folder = _series(TILTED)
    if not (MODEL / "weights.pt").exists():
        pytest.skip("bundled model not found")
    out = tmp_path_factory.mktemp("tilted")
    run = _ppr("detect", str(folder), "--model", str(MODEL), "--out", str(out / "errors.nii.gz"), "--stride", "4",
               "--dicom-out", str(out / "dicom"), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return {"folder": folder, "out": out, "report": report}


@pytest.mark.slow  # one detection of a real scan at stride 4 (~40 s on 2 shared cores)
def test_detect_writes_dicom_results_on_the_resampled_grid_of_a_tilted_series(tilted_detection):
    from ppr.image.imageio import read_image
    from ppr.statistics.candidates import candidate_labels

    report, out = tilted_detection["report"], tilted_detection["out"]
    paths = [Path(p) for p in report["dicom"]]
    assert [p.name for p in paths] == ["anomaly_map_pm.dcm", "anomaly_candidates_seg.dcm", "region_scores_sr.dcm"]
    assert report["score_map"] == "z"
    sources = _sources(tilted_detection["folder"])
    pm, seg, sr = (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    assert (pm.SOPClassUID, seg.SOPClassUID, sr.SOPClassUID) == (PARAMETRIC_MAP, SEGMENTATION, COMPREHENSIVE_3D_SR)
    for dataset in (pm, seg):
        assert dataset.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        _check_references(dataset, sources)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    # The bundled model's z-map is the anomaly map: a local quantity, unit "1", not a z-score.
    assert report["shown_map"] == "anomaly"
    quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (quantity.CodeValue, quantity.CodingSchemeDesignator) == ("ANOMALY", "99PPR")
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"

    # The map shown is the z-map: the Parametric Map holds the NIfTI z-map within half a step, on its grid.
    z_map = sitk.ReadImage(report["z_map"])
    grid = read_image(tilted_detection["folder"])
    assert z_map.GetSize() == grid.GetSize()
    z = sitk.GetArrayFromImage(z_map)
    _check_within_half_a_step(paths[0], _map_values(paths[0], z_map), z)
    # The candidates are the regions above the calibration's threshold, as the module cuts them.
    expected = candidate_labels(z, z_map.GetSpacing(), report["overlay_threshold"])
    assert np.array_equal(_segmentation_labels(paths[1], z_map), expected)

    # Tilted: the frames are the resampled grid's planes (135 at ~1.08 mm), not the 28 tilted slices,
    # and no frame claims to be derived from one source slice.
    normal = np.asarray(grid.GetDirection()).reshape(3, 3)[:, 2]
    planes = sorted({round(float(np.dot(item.PlanePositionSequence[0].ImagePositionPatient, normal)), 3)
                     for item in pm.PerFrameFunctionalGroupsSequence})
    expected_planes = [round(float(np.dot(grid.GetOrigin(), normal)) + k * grid.GetSpacing()[2], 3)
                       for k in range(grid.GetSize()[2])]
    assert len(planes) == grid.GetSize()[2] != len(sources)
    assert np.allclose(planes, expected_planes, atol=1e-3)
    assert all(len(item.get("DerivationImageSequence", [])) == 0 for item in pm.PerFrameFunctionalGroupsSequence)

    # The report holds the region scores of the JSON.
    values = {item.ConceptNameCodeSequence[0].CodeMeaning.split(" anomaly score")[0]:
              float(item.MeasuredValueSequence[0].NumericValue)
              for item in _walk(pydicom.dcmread(paths[2]).ContentSequence) if item.ValueType == "NUM"}
    assert values == pytest.approx({k: v for k, v in report["regions"].items() if v is not None}, rel=1e-6)
