"""``python -m PositionRegressionADWeb``: 127.0.0.1 unless told otherwise, a warning when opened wider."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import PositionRegressionADWeb.app as web_app
from PositionRegressionADWeb.__main__ import build_parser, is_local_host, main, settings_from, wide_open_warning
from PositionRegressionADWeb.settings import default_sample_path


class RecordingApp:
    """Stands in for the trame app: records how the server would have been started."""

    started: list[dict] = []
    settings = None

    def __init__(self, settings) -> None:
        RecordingApp.settings = settings
        callbacks = []
        self.server = SimpleNamespace(
            port=43210, controller=SimpleNamespace(on_server_ready=SimpleNamespace(add=callbacks.append)),
            start=lambda **options: (RecordingApp.started.append(options), [callback() for callback in callbacks]))


@pytest.fixture()
def recording(monkeypatch):
    RecordingApp.started = []
    monkeypatch.setattr(web_app, "PositionRegressionWebApp", RecordingApp)
    # main() sets these for the server process; monkeypatch puts them back as they were.
    monkeypatch.setenv("TRAME_ARGS", "kept")
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    return RecordingApp


def test_the_default_host_is_this_machine_only():
    args = build_parser().parse_args(["--data-dir", "."])
    assert (args.host, args.port) == ("127.0.0.1", 8080)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_warning(host):
    assert is_local_host(host)
    assert wide_open_warning(host, Path("/data")) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "viewer.example.org"])
def test_hosts_that_let_other_machines_in_are_warned_about(host):
    assert not is_local_host(host)
    warning = wide_open_warning(host, Path("/data/scans"))
    assert warning.startswith(f"warning: --host {host} opens the viewer to other machines")
    assert "no login" in warning and "/data/scans" in warning


def test_the_server_starts_on_127_0_0_1_and_says_where(tmp_path, recording, capsys):
    assert main(["--data-dir", str(tmp_path), "--port", "0"]) == 0
    (options,) = recording.started
    assert (options["host"], options["port"], options["timeout"], options["open_browser"]) == ("127.0.0.1", 0, 0, False)
    out, err = capsys.readouterr()
    assert out.strip() == "PositionRegressionADWeb ready at http://127.0.0.1:43210/"
    assert "warning" not in err


def test_opening_it_wider_prints_the_warning_first(tmp_path, recording, capsys):
    assert main(["--data-dir", str(tmp_path), "--host", "0.0.0.0"]) == 0
    assert recording.started[0]["host"] == "0.0.0.0"
    assert capsys.readouterr().err.startswith("warning: --host 0.0.0.0 opens the viewer to other machines")


def test_settings_come_from_the_command_line_only(tmp_path, recording):
    sample = tmp_path / "sample.nii.gz"
    sample.write_bytes(b"x")
    main(["--data-dir", str(tmp_path), "--model", str(tmp_path / "bundle"), "--sample", str(sample),
          "--max-upload-mb", "2.5"])
    settings = recording.settings
    assert (settings.data_dir, settings.model_path, settings.sample_path, settings.max_upload_bytes) == (
        tmp_path.resolve(), (tmp_path / "bundle").resolve(), sample.resolve(), 2_500_000)


@pytest.mark.parametrize("arguments, message", [
    (["--data-dir", "{tmp}/nowhere"], "does not exist or is not a folder"),
    (["--data-dir", "{tmp}", "--sample", "{tmp}/missing.nii.gz"], "sample scan"),
    (["--data-dir", "{tmp}", "--max-upload-mb", "0"], "--max-upload-mb must be positive"),
])
def test_unusable_settings_stop_with_exit_code_2_and_a_message(tmp_path, recording, capsys, arguments, message):
    assert main([argument.format(tmp=tmp_path) for argument in arguments]) == 2
    assert recording.started == []
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_the_sample_button_opens_the_bundled_sample_unless_told_otherwise(tmp_path):
    from PositionRegressionADLib.demo import SAMPLE_SCAN

    assert default_sample_path(tmp_path / "none.nii.gz") is None
    args = build_parser().parse_args(["--data-dir", str(tmp_path)])
    expected = SAMPLE_SCAN.resolve() if SAMPLE_SCAN.is_file() else None
    assert settings_from(args).sample_path == expected
