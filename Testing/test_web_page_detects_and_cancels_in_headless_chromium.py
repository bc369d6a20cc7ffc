"""End to end in Debian's headless Chromium: the web viewer loads the sample, detects, shows, downloads,
cancels.

The server runs as a user starts it (``python -m PositionRegressionADWeb`` on 127.0.0.1, a free
port; the bundled sample scan), with the real detector (``python -m ppr detect`` in a child
process) and a tiny untrained bundle on a coarse grid: its numbers mean nothing about anomalies,
but they are the core's, and the page must show exactly what the scores file says. Every wait is
on the page's state.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PositionRegressionADLib.demo import SAMPLE_SCAN
from PositionRegressionADLib.report import REGION_LABELS
from PositionRegressionADWeb.testing import (
    ViewerPage,
    ViewerServer,
    browser_missing,
    changed_pixels,
    head_box,
    headless_chromium,
    hot_pixels,
    hot_pixels_in_head,
    wait_for_file,
)

SAMPLE = SAMPLE_SCAN.name.split(".")[0]
DETECTION_SECONDS = 240.0
# Messages the detector prints while it works (ppr detect --progress), as the page relays them.
DETECTOR_STEPS = ("reading the input", "bringing the scan into model space", "computing the error map")


def _is_detector_step(message: str) -> bool:
    return any(message.startswith(step) for step in DETECTOR_STEPS)


@pytest.mark.slow
def test_the_page_detects_shows_downloads_and_cancels(dev_data_dir, tiny_bundle, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    (tmp_path / "data").mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    # No --sample: the button opens the bundled sample.
    arguments = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_bundle)]
    with ViewerServer(arguments, log=tmp_path / "server.log") as server, \
            headless_chromium(tmp_path / "profile", downloads) as driver:
        page = ViewerPage(driver, server.url)
        assert "tiny" in page.element("model-card").text

        page.click("load-sample")
        page.wait_for_status(f"Loaded {SAMPLE}")
        # Before any detection the slices show the grey scan and nothing hot.
        before = page.wait_for_slices(lambda pictures: all(head_box(p) for p in pictures),
                                      "the scan in the three slice views")
        assert [hot_pixels_in_head(p) for p in before] == [0, 0, 0]

        page.click("detect-button")
        seen: list[str] = []

        def finished() -> bool:
            seen.append(page.progress_message())
            return any(word in page.status() for word in ("Done", "failed"))

        page.wait_until(finished, "the detection to finish", DETECTION_SECONDS)
        assert page.status().startswith("Done in"), page.status()
        assert any(map(_is_detector_step, seen)), f"no progress from the detector was shown: {set(seen)}"

        scores = page.wait_until(lambda: page.region_scores() if len(page.region_scores()) == 4 else None,
                                 "the four region scores")
        assert set(scores) == set(REGION_LABELS)
        # Position error of a 64-voxel grid at 4 mm: within the grid's diagonal (about 443 mm).
        assert all(0.0 < value < 64 * 4.0 * math.sqrt(3) for value in scores.values()), scores

        # The overlay: hot colours inside the head on every slice through the highest error.
        page.wait_for_slices(lambda pictures: all(hot_pixels_in_head(p) >= 20 for p in pictures),
                             "the error overlay on the three slices")
        shown = page.settled_slices()
        assert all(hot_pixels_in_head(p) >= 20 for p in shown)
        assert "Stride 4" in page.element("run-details").text
        assert not page.element("device-line").text.startswith("Looking")

        # Those hot pixels are the error map's (not only the candidates' outlines): opacity 0 takes them away.
        page.slider_to_end("opacity-slider", "min")
        hidden = page.wait_for_slices(
            lambda pictures: all(changed_pixels(a, b).sum() > 100 for a, b in zip(shown, pictures)),
            "the overlay to fade at opacity 0")
        assert page.element("opacity-value").text == "0 %"
        for picture_shown, picture_hidden in zip(shown, hidden):
            box = head_box(picture_shown)
            overlay = hot_pixels(picture_shown) & changed_pixels(picture_shown, picture_hidden)
            assert overlay[box].sum() >= 20
        # At the top threshold and full opacity, only the highest error is left over the scan.
        page.slider_to_end("threshold-slider", "max")
        page.slider_to_end("opacity-slider", "max")
        page.wait_for_slices(lambda pictures: any(changed_pixels(a, b).any() for a, b in zip(hidden, pictures)),
                             "the overlay at full opacity")
        top = page.settled_slices()
        assert page.element("threshold-value").text == f"{page.state('threshold_max'):.1f} mm"
        area_default = sum(changed_pixels(a, b).sum() for a, b in zip(shown, hidden))
        area_top = sum(changed_pixels(a, b).sum() for a, b in zip(hidden, top))
        assert 0 < area_top < area_default / 2, (area_top, area_default)

        # Downloads hold the numbers the page shows.
        page.click("download-scores")
        with wait_for_file(downloads, f"{SAMPLE}_scores.csv").open(newline="") as handle:
            (row,) = list(csv.DictReader(handle))
        for region, label in REGION_LABELS.items():
            assert round(float(row[label]), 2) == pytest.approx(scores[region], abs=0.006), label
        page.click("download-error-map")
        error_map = sitk.ReadImage(str(wait_for_file(downloads, f"{SAMPLE}_error_map.nii.gz")))
        sample = sitk.ReadImage(str(SAMPLE_SCAN))
        assert error_map.GetSize() == sample.GetSize()
        np.testing.assert_allclose(error_map.GetOrigin(), sample.GetOrigin(), atol=0.01)
        assert float(sitk.GetArrayViewFromImage(error_map).max()) > 0.0

        # A second run, cancelled while it runs: the page says so, the first run's results stay.
        page.click("detect-button")
        page.wait_until(page.running, "the second run to start")
        page.click("cancel-button")
        assert "cancelled" in page.wait_for_status("cancelled", "Done", "failed")
        assert page.region_scores() == scores
        page.click("jump-button")
        page.wait_for_status("Slices moved to the highest error")
        assert server.answers_http()
    assert server.process.returncode == 0
