"""Batch (issue 13): two batches into one --output at once would mix their rows in scores.csv; the
second is refused with a message while the first holds OUTPUT/.ppr-batch.lock, and a batch killed
with kill -9 leaves no lock behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from PositionRegressionADLib import batch

HOLD = """import sys, time
from pathlib import Path
from PositionRegressionADLib.batch import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def _broken_scan(tmp_path: Path) -> Path:
    scan = tmp_path / "head.nii.gz"
    scan.write_bytes(b"not a NIfTI file" * 10)  # a quick "failed" row: no detection needed
    return scan


def test_a_second_batch_into_a_busy_output_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, tiny_bundle, capsys):
    output = tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = batch.main(["--input", str(_broken_scan(tmp_path)), "--output", str(output), "--model", str(tiny_bundle)])
        err = capsys.readouterr().err
        assert code == 2
        assert f"error: Another batch (process {holder.pid}, started " in err and f"is writing into {output}" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in output.iterdir()) == [batch.LOCK_FILE_NAME]  # no scores.csv of its own
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The first batch was killed: its lock went with it; the next batch runs and cleans up after itself.
    code = batch.main(["--input", str(_broken_scan(tmp_path)), "--output", str(output), "--model", str(tiny_bundle)])
    assert code == 1  # the broken scan's row
    assert sorted(p.name for p in output.iterdir()) == ["scores.csv"]


def test_the_lock_is_free_again_after_a_batch(tmp_path):
    with batch.OutputLock(tmp_path):
        assert (tmp_path / batch.LOCK_FILE_NAME).exists()
    with batch.OutputLock(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
