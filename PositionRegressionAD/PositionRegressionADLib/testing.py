"""Test helpers shared by the pytest suite and the module's self-test in Slicer.

- ``synthetic_head_node``: a small windowed head CT (scalp, skull, brain, one bright lesion) under an
  oblique geometry, made in memory so the self-test needs no download.
- ``fake_detect_main``: a stand-in for ``python -m ppr detect`` that speaks the same command line,
  progress lines, JSON and exit codes, and writes an error map on the input's grid that peaks at the
  input's lesion. What it does is chosen by the environment variable ``PPR_FAKE_DETECT``
  ("ok", "refuse", "crash", "no-json", "hang"; ``PPR_FAKE_PEAK_LPS`` "x,y,z" places the peak), so a
  test drives the real child-process path:
  ``python -m PositionRegressionADLib.testing -m ppr detect ...``.
- ``InProcessFakeDetection``: the same fake as a ``DetectionProcess`` that runs in this process;
  ``RecordingLauncher`` keeps the processes a logic started, to read what the detector printed.
- checks: ``volume_fingerprint`` (voxels + geometry), ``scene_node_ids``, ``segment_mask``,
  ``process_alive``, ``lps_to_ras``.

Nothing here is used by the product itself. The fake's numbers are not a detector's: never use them
as evidence that detection works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from PositionRegressionADLib.process import ProcessOutcome, Progress, parse_progress_line
from ppr.cli.orphan import watch_parent

FAKE_MODE_VARIABLE = "PPR_FAKE_DETECT"
FAKE_PID_FILE_VARIABLE = "PPR_FAKE_PID_FILE"
FAKE_PEAK_VARIABLE = "PPR_FAKE_PEAK_LPS"
# Windowed like the dev data: air -20, brain 35, bone saturating at 100, the lesion 75.
AIR, BRAIN, BONE, LESION = -20.0, 35.0, 100.0, 75.0
LESION_RANGE = (60.0, 90.0)
BACKGROUND_ERROR_MM = 6.0
PEAK_ERROR_MM = 60.0


def synthetic_head_array(shape_kji: tuple[int, int, int] = (24, 64, 64), lesion_ijk: tuple[int, int, int] = (40, 24, 14)) -> np.ndarray:
    """Voxels (k, j, i) of a windowed head: ellipsoidal scalp, skull shell, brain, a spherical lesion."""
    k, j, i = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape_kji), indexing="ij")
    radius = np.sqrt((i / 0.85) ** 2 + (j / 0.9) ** 2 + (k / 0.95) ** 2)
    volume = np.full(shape_kji, AIR, dtype=np.float32)
    volume[radius < 1.0] = BRAIN  # scalp
    volume[radius < 0.93] = BONE
    volume[radius < 0.82] = BRAIN
    li, lj, lk = lesion_ijk
    lesion = (np.arange(shape_kji[2])[None, None, :] - li) ** 2 + (np.arange(shape_kji[1])[None, :, None] - lj) ** 2 \
        + ((np.arange(shape_kji[0])[:, None, None] - lk) * 3.0) ** 2
    volume[lesion < 25.0] = LESION
    return volume


def synthetic_head_node(scene, name: str = "Synthetic head"):
    """A scalar volume node in ``scene`` holding ``synthetic_head_array`` under an oblique IJK->RAS."""
    import slicer
    import vtk

    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    matrix = vtk.vtkMatrix4x4()
    transform = vtk.vtkTransform()
    transform.Translate(-60.0, 35.0, -40.0)
    transform.RotateZ(12.0)
    transform.RotateX(-6.0)
    transform.Scale(2.5, 2.8, 4.0)
    transform.GetMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, synthetic_head_array().astype(np.int16))
    node.CreateDefaultDisplayNodes()
    return node


def volume_fingerprint(node) -> str:
    """Hash of a volume node's voxels, scalar type, dimensions and IJK->RAS: equal means untouched."""
    import hashlib

    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    image = node.GetImageData()
    digest = hashlib.sha256(slicer.util.arrayFromVolume(node).tobytes())
    digest.update(repr((image.GetDimensions(), image.GetScalarTypeAsString(),
                        [matrix.GetElement(r, c) for r in range(4) for c in range(4)])).encode())
    return digest.hexdigest()


def segment_mask(segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A segment's voxels as a (k, j, i) bool array and its labelmap's IJK->RAS matrix (4x4).

    Reads the segment's binary labelmap directly (slicer.util's helpers need slicer.mrmlScene).
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = labelmap.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(shape)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return voxels == segment.GetLabelValue(), ijk_to_ras


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a container's PID 1 may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def lps_to_ras(point) -> np.ndarray:
    """A point in ITK's LPS millimetres as Slicer's RAS."""
    return np.array([-point[0], -point[1], point[2]], dtype=float)


class RecordingLauncher:
    """Launches like ``inner`` and keeps the processes, so a test can read what the detector reported."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.processes = []
        self.commands: list[list[str]] = []

    def __call__(self, command, env):
        self.commands.append(list(command))
        self.processes.append(self.inner(command, env))
        return self.processes[-1]

    def report(self, index: int = -1) -> dict:
        """The JSON object the ``index``-th detector printed last on stdout."""
        return json.loads(self.processes[index].outcome().stdout.splitlines()[-1])


def scene_node_ids(scene) -> list[str]:
    """IDs of every node of the scene, in scene order."""
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


# ---------------------------------------------------------------------------------------------
# Fake detector


def _parse_detect_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The detect command's arguments; anything before ``detect`` (``-m ppr``) is ignored."""
    argv = list(argv)
    rest = argv[argv.index("detect") + 1:] if "detect" in argv else argv
    parser = argparse.ArgumentParser(prog="fake ppr detect")
    parser.add_argument("input")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--progress", action="store_true")
    return parser.parse_args(rest)


def fake_peak_lps(image, env: Mapping[str, str]) -> np.ndarray | None:
    """Where the fake error peaks: ``PPR_FAKE_PEAK_LPS`` ("x,y,z" mm), else the lesion's centroid."""
    import SimpleITK as sitk

    if env.get(FAKE_PEAK_VARIABLE):
        return np.array([float(v) for v in env[FAKE_PEAK_VARIABLE].split(",")])
    values = sitk.GetArrayFromImage(image)
    lesion = (values >= LESION_RANGE[0]) & (values <= LESION_RANGE[1])
    if not lesion.any():
        return None
    centre = np.array(np.nonzero(lesion)).mean(axis=1)  # (k, j, i)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre[::-1])))


def fake_error_map(image, peak_lps: np.ndarray | None, sigma_mm: float = 6.0):
    """Error map (SimpleITK, the input's grid): background in the head, a Gaussian peak at ``peak_lps``."""
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image)
    head = values > AIR + 5.0
    errors = np.where(head, BACKGROUND_ERROR_MM, 0.0).astype(np.float32)
    if peak_lps is not None:
        # Only voxels within 4 sigma matter: a box around the peak keeps big scans fast.
        centre = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in peak_lps]))[::-1]
        reach = 4.0 * sigma_mm / min(image.GetSpacing())
        low = np.clip(np.floor(centre - reach), 0, np.array(values.shape) - 1).astype(int)
        high = np.clip(np.ceil(centre + reach) + 1, 1, np.array(values.shape)).astype(int)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), axis=-1)
        matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
        points = grid[..., ::-1] @ matrix.T + np.asarray(image.GetOrigin())
        distance = np.linalg.norm(points - peak_lps, axis=-1)
        peak = PEAK_ERROR_MM * np.exp(-0.5 * (distance / sigma_mm) ** 2)
        errors[box] += np.where(head[box], peak, 0.0).astype(np.float32)
    result = sitk.GetImageFromArray(errors)
    result.CopyInformation(image)
    return result


def _fake_report(image, errors, args: argparse.Namespace, seconds: float) -> dict:
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image)
    error_values = sitk.GetArrayFromImage(errors)
    head = values > AIR + 5.0
    # Split at the centre column of the array: a fake's "hemispheres", not anatomy.
    left = np.zeros_like(head)
    left[..., values.shape[2] // 2:] = True
    k, j, i = np.unravel_index(int(np.argmax(error_values)), error_values.shape)
    return {
        "seconds": round(seconds, 3), "device": "cpu" if args.device == "auto" else args.device,
        "stride": args.stride, "method": "fake", "aggregate": "mean", "output": str(Path(args.out).resolve()),
        "model": args.model,
        "error_mm": {"max": float(error_values.max()), "p99": float(np.percentile(error_values[head], 99)),
                     "mean": float(error_values[head].mean())},
        "regions": {
            "left_hemisphere": float(error_values[head & left].mean()),
            "right_hemisphere": float(error_values[head & ~left].mean()),
            "skull": float(error_values[values >= BONE - 1].mean()),
            "head": float(error_values[head].mean()),
        },
        "max_error_lps": list(image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))),
        "registration_metric": 0.5,
    }


def fake_detect_main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Behave like ``python -m ppr detect`` (see the module docstring); returns the exit code."""
    import SimpleITK as sitk

    env = os.environ if env is None else env
    watch_parent(env)  # as ppr's entry point does
    mode = env.get(FAKE_MODE_VARIABLE, "ok")
    args = _parse_detect_arguments(argv)
    started = time.monotonic()
    print("PROGRESS 0.0 reading the input", file=sys.stderr, flush=True)
    if mode == "refuse":
        print("error: The input is a single slice; a head CT needs at least 10 slices.", file=sys.stderr)
        return 2
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: fake internal failure", file=sys.stderr)
        return 1
    if mode == "hang":
        _hang(env)
    image = sitk.ReadImage(args.input)
    print("PROGRESS 0.5 computing the error map", file=sys.stderr, flush=True)
    errors = fake_error_map(image, fake_peak_lps(image, env))
    sitk.WriteImage(errors, args.out)
    print("PROGRESS 1.0 done", file=sys.stderr, flush=True)
    if mode != "no-json":
        print(json.dumps(_fake_report(image, errors, args, time.monotonic() - started)))
    return 0


def _hang(env: Mapping[str, str]) -> None:
    """Start a grandchild and wait for ever (cancel must kill both); their pids go to a file."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pid_file = env.get(FAKE_PID_FILE_VARIABLE)
    if pid_file:
        Path(pid_file).write_text(f"{os.getpid()} {worker.pid}\n")
    print("PROGRESS 0.2 waiting for ever", file=sys.stderr, flush=True)
    time.sleep(600)


class InProcessFakeDetection:
    """``DetectionProcess`` that runs ``fake_detect_main`` in this process when first polled."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._outcome: ProcessOutcome | None = None
        self._progress: list[Progress] = []
        self._cancelled = False

    def _run(self) -> None:
        import contextlib
        import io

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = self._main()
        lines = stderr.getvalue().splitlines()
        self._progress = [p for p in map(parse_progress_line, lines) if p is not None]
        other = "\n".join(line for line in lines if parse_progress_line(line) is None)
        self._outcome = ProcessOutcome(code, stdout.getvalue(), other, cancelled=False)

    def _main(self) -> int:
        """What the child runs (a subclass may run the real ``ppr`` command instead)."""
        return fake_detect_main(self._command, self._env)

    def poll(self) -> int | None:
        if self._outcome is None and not self._cancelled:
            self._run()
        return self._outcome.returncode if self._outcome else -9

    def take_progress(self) -> list[Progress]:
        updates, self._progress = self._progress, []
        return updates

    def cancel(self) -> None:
        self._cancelled = True

    def outcome(self) -> ProcessOutcome:
        if self._cancelled:
            return ProcessOutcome(-9, "", "", cancelled=True)
        self.poll()
        return self._outcome


if __name__ == "__main__":
    sys.exit(fake_detect_main(sys.argv[1:]))
