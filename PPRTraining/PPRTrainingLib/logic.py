"""The PPR Training logic: folders of healthy head CTs in, a model bundle and its report out.

Used by the Slicer widget (PPRTraining.py), by ``Scripts/train.py`` and directly from Python; it
needs no GUI and no MRML scene. The work happens in a ``python -m ppr train`` subprocess
(``training_process``); this class only assembles the request, starts/follows it and writes the
report. It does not decide which scans are healthy and does not load the trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ppr.errors import PPRError

from .data_folders import DEFAULT_EXCLUDES, images_in_folders
from .report import TrainingReport, write_training_report
from .training_process import (
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
    TrainingRun,
    child_environment,
    python_interpreter,
)


class PPRTrainingLogic:
    """Train a PPR model bundle on healthy head CTs, with progress, stop and a report.

    >>> logic = PPRTrainingLogic()  # doctest: +SKIP
    >>> request = logic.request_from_folders([Path("healthy")], Path("models/my_model"),
    ...                                      validation_folders=[Path("healthy_val")],
    ...                                      extra_args=["--max-minutes", "60"])
    >>> outcome = logic.train(request, on_progress=lambda p: print(p.fraction, p.message))
    >>> if outcome.succeeded: print(logic.write_report(request.bundle).figure)

    ``command_prefix`` replaces ``[PythonSlicer or python, "-m", "ppr"]``: tests pass a fake trainer.
    """

    def __init__(self, command_prefix: Sequence[str] | None = None):
        self.command_prefix = list(command_prefix) if command_prefix is not None else None

    def request_from_folders(
        self,
        folders: Sequence[Path],
        bundle: Path,
        validation_folders: Sequence[Path] = (),
        extra_args: Sequence[str] = (),
        exclude: Sequence[str] = DEFAULT_EXCLUDES,
    ) -> TrainingRequest:
        """Collect the images of the training and validation folders into a training request."""
        if not folders:
            raise PPRError("No training data folder given: choose at least one folder of healthy head CTs.")
        images = images_in_folders(folders, exclude)
        validation = images_in_folders(validation_folders, exclude) if validation_folders else []
        shared = {p.resolve() for p in images} & {p.resolve() for p in validation}
        if shared:
            # A validation loss on training scans would look better than the model is.
            raise PPRError(
                f"{len(shared)} validation scan(s) are also training scans (e.g. {sorted(shared)[0]}): "
                "use separate folders for training and validation."
            )
        return TrainingRequest(tuple(images), Path(bundle), tuple(validation), tuple(extra_args))

    def command(self, request: TrainingRequest) -> list[str]:
        prefix = self.command_prefix or [python_interpreter(), "-m", "ppr"]
        return [*prefix, *request.ppr_train_args()]

    def start(self, request: TrainingRequest) -> TrainingRun:
        """Start training in the background; poll, stop or wait on the returned run."""
        return TrainingRun(self.command(request), env=child_environment())

    def train(
        self,
        request: TrainingRequest,
        on_progress: Callable[[TrainingProgress], None] | None = None,
    ) -> TrainingOutcome:
        """Train and wait; an interrupt (Ctrl+C) stops the training process and its children."""
        run = self.start(request)
        try:
            return run.wait(on_progress)
        except BaseException:
            run.stop()
            raise

    def write_report(self, bundle: Path) -> TrainingReport:
        """Loss curves and summary beside the bundle, from its training log."""
        return write_training_report(bundle)
