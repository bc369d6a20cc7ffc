"""The child processes the modules start (``ppr train``, ``ppr calibrate``, ``ppr detect``) run in a
Python that holds only what 3D Slicer ships plus torch (from the PyTorch extension).

Slicer's Python has no scikit-image, scikit-learn, matplotlib, ...: a child that imports one of them
fails in every real Slicer while every test here passes. So the children run here with an import
system that behaves as if nothing else were installed: a ``sitecustomize`` on PYTHONPATH wraps every
meta-path finder so that a module outside the allowed distributions is not found (``import``
raises ModuleNotFoundError, ``importlib.util.find_spec`` returns None, exactly as when the package
is missing). The commands are the ones the Lib starts: ``PPRTrainingLogic.command`` /
``training_process.child_environment`` and ``DetectionLogic.detect_command`` /
``detection_logic.child_environment`` through ``ChildProcess``. Chained on small real dev scans:
a two-step training, a calibration on three held-out scans, a detection with that bundle.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement

# What 3D Slicer 5.12.3 bundles in its Python (SuperBuild/External_python-*.cmake: numpy, scipy,
# SimpleITK, dicom, requests, pythonqt and setuptools/pip/wheel requirements), by distribution name.
SLICER_SHIPS = (
    "numpy", "scipy", "simpleitk", "pydicom", "six", "pillow", "retrying", "dicomweb-client", "highdicom",
    "pyjpegls", "typing-extensions", "packaging", "pyparsing", "requests", "certifi", "idna",
    "charset-normalizer", "urllib3", "setuptools", "pip", "wheel",
)
# The PyTorch extension pip-installs torch, which brings its own requirements.
TORCH = ("torch",)
# Never there in Slicer's Python (named so a failure message is plain); everything else that is
# not allowed is blocked too.
KNOWN_ABSENT = ("skimage", "sklearn", "matplotlib", "vtk", "slicer", "qt", "ctk", "pandas", "nibabel")

SITECUSTOMIZE = '''
"""Test-only: the import system of a Python that has only the allowed distributions installed."""
import os
import re
import sys

_ALLOWED = frozenset(os.environ["PPR_ALLOWED_TOP_LEVEL"].split(","))
_DISTRIBUTIONS = frozenset(os.environ["PPR_ALLOWED_DISTRIBUTIONS"].split(","))
_LOG = os.environ["PPR_BLOCKED_LOG"]


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed(name):
    top = name.partition(".")[0]
    return top in _ALLOWED or top in sys.stdlib_module_names or top in sys.builtin_module_names


_STDLIB = os.path.dirname(os.__file__) + os.sep


def _in_stdlib(spec):
    # Private stdlib modules (_sysconfigdata_*, ...) are not in sys.stdlib_module_names.
    origin = spec.origin or ""
    return origin.startswith(_STDLIB) and "site-packages" not in origin


def _record(what, name):
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(f"{what} {name}\\n")


class _Installed:
    """A meta-path finder that does not find modules outside the allowed distributions."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        find = getattr(self._finder, "find_spec", None)
        spec = find(name, path, target) if find is not None else None
        if spec is None or _allowed(name) or _in_stdlib(spec):
            return spec
        _record("blocked", name)
        return None

    def find_distributions(self, *args, **kwargs):
        # importlib.metadata asks the finders too: only the allowed distributions are installed.
        find = getattr(self._finder, "find_distributions", None)
        for distribution in (find(*args, **kwargs) if find is not None else ()):
            if _normalise(distribution.metadata["Name"] or "") in _DISTRIBUTIONS:
                yield distribution

    def __getattr__(self, name):
        return getattr(self._finder, name)


for _name in sorted(sys.modules):
    if not _allowed(_name) and _name not in ("sitecustomize", "__main__"):
        _record("preloaded", _name)
sys.meta_path[:] = [_Installed(finder) for finder in sys.meta_path]
'''


def _distribution_closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` and every requirement they pull in (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _normalise(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_distributions() -> set[str]:
    return _distribution_closure(SLICER_SHIPS + TORCH)


def allowed_top_level_modules(distributions: set[str]) -> set[str]:
    modules = {"ppr", "PositionRegressionADLib", "sitecustomize"}  # ours; its MRML parts need slicer, blocked
    for module, owners in importlib.metadata.packages_distributions().items():
        if any(_normalise(owner) in distributions for owner in owners):
            modules.add(module)
    return modules


@pytest.fixture(scope="module")
def slicer_like_env(tmp_path_factory) -> dict[str, str]:
    """Environment additions that make a child Python see only what Slicer ships plus torch."""
    folder = tmp_path_factory.mktemp("slicer-python")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    distributions = allowed_distributions()
    allowed = allowed_top_level_modules(distributions)
    assert "torch" in allowed and "numpy" in allowed and "SimpleITK" in allowed
    assert not allowed & set(KNOWN_ABSENT), allowed & set(KNOWN_ABSENT)
    return {"sitecustomize_dir": str(folder), "PPR_ALLOWED_TOP_LEVEL": ",".join(sorted(allowed)),
            "PPR_ALLOWED_DISTRIBUTIONS": ",".join(sorted(distributions)),
            "PPR_BLOCKED_LOG": str(folder / "blocked.log")}


def restricted(env: dict[str, str], slicer_like: dict[str, str]) -> dict[str, str]:
    """``env`` (what the Lib gives its child) with the restricted import system first on PYTHONPATH."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([slicer_like["sitecustomize_dir"], *filter(None, [env.get("PYTHONPATH")])])
    for name in ("PPR_ALLOWED_TOP_LEVEL", "PPR_ALLOWED_DISTRIBUTIONS", "PPR_BLOCKED_LOG"):
        env[name] = slicer_like[name]
    return env


def blocked_log(slicer_like: dict[str, str]) -> list[str]:
    path = Path(slicer_like["PPR_BLOCKED_LOG"])
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_the_restricted_python_refuses_what_slicer_lacks_and_keeps_what_it_has(slicer_like_env, tmp_path):
    import subprocess

    code = ("import importlib.util, json\n"
            "found = {n: importlib.util.find_spec(n) is not None for n in %r}\n"
            "import importlib.metadata, numpy, scipy.ndimage, SimpleITK, torch\n"
            "found['metadata'] = sorted(d.metadata['Name'].lower() for d in importlib.metadata.distributions()\n"
            "                           if d.metadata['Name'].lower() in ('scikit-image', 'pydicom'))\n"
            "try:\n    import skimage\nexcept ModuleNotFoundError as e:\n    found['error'] = str(e)\n"
            "print(json.dumps(found))\n" % (["skimage", "sklearn", "matplotlib", "vtk", "slicer", "numpy", "torch"],))
    env = restricted({"PATH": "/usr/bin:/bin"}, slicer_like_env)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"skimage": False, "sklearn": False, "matplotlib": False, "vtk": False, "slicer": False,
                     "numpy": True, "torch": True, "error": "No module named 'skimage'", "metadata": ["pydicom"]}
    assert not [line for line in blocked_log(slicer_like_env) if line.startswith("preloaded")]


def test_the_device_probe_child_runs_with_only_what_slicer_ships(slicer_like_env):
    from PositionRegressionADLib.detection_logic import child_environment
    from PositionRegressionADLib.devices import DeviceProbe

    probe = DeviceProbe([sys.executable], restricted(child_environment(), slicer_like_env))
    deadline = time.monotonic() + 240
    while (line := probe.poll()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert line.startswith(("No CUDA GPU found", "GPU: ")), line


def small_copy(source: Path, target: Path) -> Path:
    """The scan at a quarter of its in-plane resolution: real anatomy, 16x fewer voxels."""
    sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(source)), [4, 4, 1]), str(target))
    return target


TRAIN_CASE, CALIBRATION_CASES, DETECT_CASE = "ctich_054", ("ctich_056", "ctich_057", "ctich_100"), "ctich_051"
TWO_STEP_TRAINING = ["--steps", "2", "--size", "64", "--spacing", "4", "--m", "2", "--mode", "sampled",
                     "--batch", "8", "--prewindowed", "--seed", "0", "--device", "cpu"]


@pytest.mark.slow
def test_train_calibrate_and_detect_children_run_with_only_what_slicer_ships(
        dev_data_dir, slicer_like_env, tmp_path):
    from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
    from PositionRegressionADLib.process import ChildProcess
    from PositionRegressionADLib.scene_io import SceneContext, load_volume
    from PPRTrainingLib.logic import PPRTrainingLogic
    from PPRTrainingLib.training_process import TrainingRun
    from PPRTrainingLib.training_process import child_environment as training_environment

    scans = {}
    for role, cases in (("train", [TRAIN_CASE]), ("calibrate", CALIBRATION_CASES), ("detect", [DETECT_CASE])):
        (tmp_path / role).mkdir()
        scans[role] = [small_copy(dev_data_dir / f"{case}.nii.gz", tmp_path / role / f"{case}.nii.gz")
                       for case in cases]

    # Training, as the PPR Training module starts it.
    logic = PPRTrainingLogic()
    bundle = tmp_path / "bundle"
    request = logic.request_from_folders([tmp_path / "train"], bundle, extra_args=TWO_STEP_TRAINING)
    outcome = TrainingRun(logic.command(request), env=restricted(training_environment(), slicer_like_env)).wait()
    assert outcome.succeeded, f"{outcome.error_message}\nblocked: {blocked_log(slicer_like_env)[-20:]}"
    assert len(json.loads((bundle / "training_log.json").read_text())["steps"]) == 2

    # Calibration: the same interpreter and environment, ``-m ppr calibrate``.
    command = [*logic.command(request)[:3], "calibrate", str(bundle),
               *map(str, scans["calibrate"]), "--device", "cpu", "--json"]
    calibrate = ChildProcess(command, restricted(training_environment(), slicer_like_env))
    result = calibrate.outcome()
    assert result.returncode == 0, f"{result.stderr[-3000:]}\nblocked: {blocked_log(slicer_like_env)[-20:]}"
    assert json.loads(result.stdout.strip().splitlines()[-1])["n_scans"] == 3

    # Detection, as the Position Regression AD module starts it (the calibrated bundle: z-map too).
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, scans["detect"][0])
    launcher = lambda command, env: ChildProcess(command, restricted(env, slicer_like_env))  # noqa: E731
    results = DetectionLogic(context.scene, launcher=launcher).detect(
        volume, DetectionOptions(model_path=bundle, device="cpu", stride=4))
    assert results.error_map is not None and results.z_map is not None
    assert results.scores.GetNumberOfRows() == 1

    # Optional imports the children try and handle (torch probes a few) are fine; nothing preloaded.
    tried = sorted({line.split()[1] for line in blocked_log(slicer_like_env) if line.startswith("blocked")})
    print("not found in the Slicer-like Python (handled by the children):", tried)
    assert not [line for line in blocked_log(slicer_like_env) if line.startswith("preloaded")]
