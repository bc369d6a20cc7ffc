"""The panel's run state without Qt: every transition, what the panel then shows, and errors that
``slicer.util.tryWithErrorDisplay`` re-raises ending in a consistent "failed" view."""

from __future__ import annotations

import contextlib

import pytest

from PositionRegressionADLib.run_state import (
    DETECTION_WORDS,
    TRAINING_WORDS,
    Phase,
    RunState,
    RunStateError,
    shown_then_recorded,
)


def running_state(words=DETECTION_WORDS) -> RunState:
    state = RunState(words)
    state.started()
    return state


def state_in(phase: str) -> RunState:
    """A detection state brought to ``phase`` ("idle", "installing", "running", "cancelling", "done")."""
    state = RunState()
    if phase == "installing":
        state.installing()
    if phase in ("running", "cancelling", "done"):
        state.started()
    if phase == "cancelling":
        state.cancel_requested()
    if phase == "done":
        state.succeeded("Done.")
    return state


def test_idle_offers_to_start_and_shows_no_progress():
    view = RunState().view()
    assert (view.phase, view.action_text, view.can_start, view.can_cancel) == (Phase.IDLE, "Detect anomalies", True, False)
    assert (view.progress_visible, view.progress, view.status) == (False, 0, "")


def test_running_shows_progress_and_offers_cancel():
    state = running_state()
    assert state.view().status == "Starting..."
    state.progress(0.25, "registering")
    view = state.view()
    assert (view.phase, view.action_text, view.can_start, view.can_cancel) == (Phase.RUNNING, "Cancel", False, True)
    assert (view.progress_visible, view.progress, view.status) == (True, 250, "registering")
    state.progress(7.0, "clamped")
    assert state.view().progress == 1000


def test_cancel_request_then_cancelled_ends_ready_to_start_again():
    state = running_state()
    state.progress(0.5, "computing")
    assert state.cancel_requested() is True
    view = state.view()
    assert (view.phase, view.action_text, view.can_start, view.can_cancel) == (Phase.CANCELLING, "Cancelling...", False, False)
    assert view.progress_visible and view.progress == 500
    state.progress(0.9, "a late report")  # the child's last words before the kill are not shown
    assert state.view().status == "Cancelling..."
    assert state.cancel_requested() is False  # a second click does nothing more
    state.cancelled()
    view = state.view()
    assert (view.phase, view.action_text, view.can_start, view.progress_visible, view.status) == (
        Phase.CANCELLED, "Detect anomalies", True, False, "Cancelled.")


def test_success_shows_the_status_and_hides_progress():
    state = running_state()
    state.succeeded("Done in 40 s.")
    view = state.view()
    assert (view.phase, view.can_start, view.can_cancel, view.progress_visible, view.status) == (
        Phase.DONE, True, False, False, "Done in 40 s.")


def test_a_run_that_ends_before_the_cancel_lands_is_done():
    state = running_state()
    state.cancel_requested()
    state.succeeded("Done in 3 s.")
    assert state.phase is Phase.DONE


@pytest.mark.parametrize("phase_setup", ["idle", "installing", "running", "cancelling", "done"])
def test_failure_from_any_phase_gives_a_startable_view_with_the_first_line(phase_setup):
    state = state_in(phase_setup)
    state.failed(RuntimeError("The detector stopped unexpectedly (exit code 1).\nTraceback ..."))
    view = state.view()
    assert (view.phase, view.action_text, view.can_start, view.can_cancel, view.progress_visible) == (
        Phase.FAILED, "Detect anomalies", True, False, False)
    assert view.status == "Detection failed: The detector stopped unexpectedly (exit code 1)."


def test_an_error_without_a_message_is_named_by_its_type():
    state = RunState()
    state.failed(KeyError())
    assert state.view().status == "Detection failed: KeyError"


def test_installing_blocks_start_and_cancel_then_runs_or_gives_up():
    state = RunState()
    state.installing()
    view = state.view()
    assert (view.phase, view.can_start, view.can_cancel, view.progress_visible) == (Phase.INSTALLING, False, False, False)
    assert view.action_text == view.status == "Installing PyTorch (several minutes)..."
    assert state.busy and state.cancel_requested() is False
    state.started()
    assert state.phase is Phase.RUNNING
    declined = RunState()
    declined.installing()
    declined.not_started("Detection needs PyTorch, which was not installed.")
    assert (declined.view().phase, declined.view().can_start) == (Phase.IDLE, True)
    assert declined.view().status == "Detection needs PyTorch, which was not installed."


@pytest.mark.parametrize("ended", ["failed", "cancelled", "done"])
def test_a_new_run_starts_after_any_end(ended):
    state = running_state()
    {"failed": lambda: state.failed("x"), "cancelled": state.cancelled,
     "done": lambda: state.succeeded("Done.")}[ended]()
    state.started()
    assert state.phase is Phase.RUNNING and state.view().progress == 0


@pytest.mark.parametrize(("setup", "transition"), [
    ("idle", "succeeded"), ("idle", "cancelled"), ("done", "succeeded"), ("running", "started"),
    ("running", "installing"), ("cancelling", "started"), ("running", "not_started"), ("running", "note"),
])
def test_impossible_transitions_are_refused(setup, transition):
    state = state_in(setup)
    before = state.view()
    with pytest.raises(RunStateError):
        method = getattr(state, transition)
        method("x") if transition in ("succeeded", "note") else method()
    assert state.view() == before


def test_progress_outside_a_run_is_ignored():
    state = RunState()
    state.progress(0.5, "stray")
    assert state.view() == RunState().view()


def test_leaving_the_module_keeps_the_run_going_and_coming_back_shows_its_end():
    state = running_state()
    state.left()
    assert state.away and state.phase is Phase.RUNNING
    state.progress(0.5, "computing")
    state.succeeded("Done in 12 s.")
    state.entered()
    assert not state.away and state.view().status == "Done in 12 s."


def test_notes_add_lines_to_an_ended_run():
    state = running_state(TRAINING_WORDS)
    state.succeeded("Model bundle written to /m (1.0 min).")
    state.note("No report: training_log.json is missing")
    assert state.view().status == "Model bundle written to /m (1.0 min).\nNo report: training_log.json is missing"


def test_training_words():
    state = running_state(TRAINING_WORDS)
    assert state.view().action_text == "Stop"
    state.cancel_requested()
    assert state.view().action_text == "Stopping..."
    state.cancelled()
    assert (state.view().action_text, state.view().status) == ("Start training", "Training stopped.")
    state.failed("exit code 2")
    assert state.view().status == "Training failed: exit code 2"


@contextlib.contextmanager
def slicers_try_with_error_display(shown: list):
    """What slicer.util.tryWithErrorDisplay does (Slicer 5.0.3 to main): show the error, then re-raise it."""
    try:
        yield
    except Exception as error:
        shown.append(error)
        raise


def test_an_error_is_shown_once_then_recorded_instead_of_escaping():
    shown, state = [], running_state()
    after = []
    with shown_then_recorded(slicers_try_with_error_display(shown), state.failed):
        raise RuntimeError("The input volume was removed from the scene during detection.")
    after.append("the caller goes on")
    assert [str(error) for error in shown] == ["The input volume was removed from the scene during detection."]
    assert after == ["the caller goes on"]
    assert state.view().status == "Detection failed: The input volume was removed from the scene during detection."


def test_without_an_error_nothing_is_shown_or_recorded():
    shown, state = [], running_state()
    with shown_then_recorded(slicers_try_with_error_display(shown), state.failed):
        state.succeeded("Done.")
    assert shown == [] and state.phase is Phase.DONE


def test_keyboard_interrupt_is_not_swallowed():
    state = running_state()
    with pytest.raises(KeyboardInterrupt):
        with shown_then_recorded(contextlib.nullcontext(), state.failed):
            raise KeyboardInterrupt
    assert state.phase is Phase.RUNNING
