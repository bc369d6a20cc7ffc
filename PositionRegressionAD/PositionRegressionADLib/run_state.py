"""What a module panel shows about its background run (a detection, a training), as one Qt-free object.

The widget tells the state what happened (the user clicked, PyTorch is being installed, the child
reported progress, the run ended, the user left or re-entered the module) and renders ``view()``
onto its button(s), progress bar and status line; it keeps no flags of its own. Every way a run can
end, failures included, leaves a view that is consistent: the button says what a click will do,
the progress bar is hidden, the status says what happened.

``slicer.util.tryWithErrorDisplay`` shows an error and then *re-raises* it, so code after the
``with`` block never runs on a failure: ``shown_then_recorded`` wraps it so the error is shown and
then handed to the state (``state.failed``) instead of escaping the Qt slot.

Phases: idle, installing (PyTorch, before a run), running, cancelling, failed, cancelled, done.
Leaving the module is not a phase: a run goes on while the user is in another module (``away``),
its results land as usual, and the panel shows the outcome when the user comes back.

Usage::

    state = RunState(DETECTION_WORDS)
    state.installing()            # only when PyTorch must be installed first
    state.started()
    state.progress(0.4, "registering")
    state.cancel_requested()      # True: the widget now kills the child
    state.cancelled()             # or state.succeeded("Done in 40 s."), or state.failed(error)
    view = state.view()           # action_text, can_start, can_cancel, progress_visible, progress, status

It knows nothing about detection, MRML or Qt.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ContextManager


class Phase(enum.Enum):
    IDLE = "idle"
    INSTALLING = "installing"
    RUNNING = "running"
    CANCELLING = "cancelling"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DONE = "done"


# Phases from which a new run may start, and those during which one is under way.
READY = frozenset({Phase.IDLE, Phase.FAILED, Phase.CANCELLED, Phase.DONE})
BUSY = frozenset({Phase.INSTALLING, Phase.RUNNING, Phase.CANCELLING})


class RunStateError(RuntimeError):
    """A transition that cannot happen in the current phase: a bug in the widget, not a user error."""


@dataclass(frozen=True)
class RunWords:
    """What the panel says in each phase (a detection and a training say it differently)."""

    start: str
    cancel: str
    cancelling: str
    starting: str
    installing: str
    cancelled: str
    failed: str


def untranslated(text: str) -> str:
    return text


# The words take Slicer's translation function (``slicer.i18n.tr``, imported as ``_`` by the module
# files); Qt's lupdate finds the ``_("...")`` literals below. Outside Slicer they stay English.
def detection_words(_: Callable[[str], str] = untranslated) -> RunWords:
    return RunWords(start=_("Detect anomalies"), cancel=_("Cancel"), cancelling=_("Cancelling..."),
                    starting=_("Starting..."), installing=_("Installing PyTorch (several minutes)..."),
                    cancelled=_("Cancelled."), failed=_("Detection failed"))


def training_words(_: Callable[[str], str] = untranslated) -> RunWords:
    return RunWords(start=_("Start training"), cancel=_("Stop"), cancelling=_("Stopping..."),
                    starting=_("Starting..."), installing=_("Installing PyTorch (several minutes)..."),
                    cancelled=_("Training stopped."), failed=_("Training failed"))


DETECTION_WORDS = detection_words()
TRAINING_WORDS = training_words()


@dataclass(frozen=True)
class RunView:
    """What the widget draws.

    action_text: the text of a single start/cancel button.
    can_start: a click may start a run (the widget adds its own conditions, e.g. an input chosen).
    can_cancel: a click cancels the run.
    progress: 0..1000, for a QProgressBar with that range.
    """

    phase: Phase
    action_text: str
    can_start: bool
    can_cancel: bool
    progress_visible: bool
    progress: int
    status: str


class RunState:
    """The phase of the panel's run, its progress and status, and whether the user is in the module."""

    def __init__(self, words: RunWords = DETECTION_WORDS) -> None:
        self.words = words
        self.phase = Phase.IDLE
        self.fraction = 0.0
        self.status = ""
        self.away = False

    @property
    def busy(self) -> bool:
        return self.phase in BUSY

    # ---- transitions ---------------------------------------------------------------------------

    def installing(self) -> None:
        """PyTorch is being installed before a run (blocking, minutes): nothing can be clicked."""
        self._require(READY, "install PyTorch")
        self._enter(Phase.INSTALLING, 0.0, self.words.installing)

    def started(self) -> None:
        """The child process is running."""
        self._require(READY | {Phase.INSTALLING}, "start")
        self._enter(Phase.RUNNING, 0.0, self.words.starting)

    def not_started(self, status: str = "") -> None:
        """Nothing was started and nothing went wrong (e.g. the user declined to install PyTorch)."""
        self._require(READY | {Phase.INSTALLING}, "give up starting")
        self._enter(Phase.IDLE, 0.0, status)

    def progress(self, fraction: float, message: str) -> None:
        """A progress report of the child; ignored unless running (a late report after a cancel)."""
        if self.phase is Phase.RUNNING:
            self.fraction = min(max(float(fraction), 0.0), 1.0)
            self.status = message

    def cancel_requested(self) -> bool:
        """The user asked to cancel; True if the widget must now stop the child."""
        if self.phase is not Phase.RUNNING:
            return False
        self._enter(Phase.CANCELLING, self.fraction, self.words.cancelling)
        return True

    def succeeded(self, status: str) -> None:
        """The run ended and its results are in place (a cancel that came too late ends here too)."""
        self._require({Phase.RUNNING, Phase.CANCELLING}, "succeed")
        self._enter(Phase.DONE, 1.0, status)

    def cancelled(self, status: str | None = None) -> None:
        """The run ended without results because it was cancelled (by the user or the scene closing)."""
        self._require({Phase.RUNNING, Phase.CANCELLING}, "be cancelled")
        self._enter(Phase.CANCELLED, 0.0, status or self.words.cancelled)

    def failed(self, error: BaseException | str) -> None:
        """Starting, running or showing the results failed; the full message was shown elsewhere."""
        self._enter(Phase.FAILED, 0.0, f"{self.words.failed}: {_first_line(error)}")

    def note(self, line: str) -> None:
        """Add a line to the status of an ended run (where its report went, or why there is none)."""
        self._require(READY, "add a note")
        self.status = f"{self.status}\n{line}" if self.status else line

    def left(self) -> None:
        """The user opened another module; a run goes on."""
        self.away = True

    def entered(self) -> None:
        """The user came back to the module."""
        self.away = False

    # ---- view ----------------------------------------------------------------------------------

    def view(self) -> RunView:
        phase = self.phase
        action = {Phase.RUNNING: self.words.cancel, Phase.CANCELLING: self.words.cancelling,
                  Phase.INSTALLING: self.words.installing}.get(phase, self.words.start)
        running = phase in (Phase.RUNNING, Phase.CANCELLING)
        return RunView(phase=phase, action_text=action, can_start=phase in READY,
                       can_cancel=phase is Phase.RUNNING, progress_visible=running,
                       progress=int(round(1000 * self.fraction)) if running else 0, status=self.status)

    # ---- helpers -------------------------------------------------------------------------------

    def _require(self, phases, what: str) -> None:
        if self.phase not in phases:
            raise RunStateError(f"cannot {what} while {self.phase.value}")

    def _enter(self, phase: Phase, fraction: float, status: str) -> None:
        self.phase, self.fraction, self.status = phase, fraction, status


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def shown_then_recorded(display: ContextManager, record: Callable[[Exception], None]) -> Iterator[None]:
    """Run the block inside ``display`` (``slicer.util.tryWithErrorDisplay(...)``: shows an error,
    then re-raises it) and hand an error to ``record`` instead of letting it escape.

    ``with shown_then_recorded(slicer.util.tryWithErrorDisplay("Detection failed."), state.failed): ...``
    """
    try:
        with display:
            yield
    except Exception as error:  # noqa: BLE001 - every failure must reach the state, whatever its type
        record(error)
