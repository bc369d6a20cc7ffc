"""Through the running server, in headless Chromium: what the page may not do is refused, and it goes on serving.

A path outside --data-dir (sent as a hand-made client would, bypassing the page's list), a file in
the data folder that is not a volume, an upload over the size limit and an upload that is not an
image are refused with a message on the page; a detection the detector refuses (a broken model
bundle picked from the data folder) shows the detector's message; after all of it the page still
loads a scan.
"""

from __future__ import annotations

import pytest

from PositionRegressionADWeb.testing import ViewerPage, ViewerServer, browser_missing, headless_chromium


@pytest.mark.slow
def test_the_server_refuses_unsafe_requests_and_keeps_serving(dev_data_dir, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    data = tmp_path / "data"
    (data / "models" / "broken").mkdir(parents=True)
    (data / "models" / "broken" / "config.json").write_text('{"network": {"m": 2, "patch_size": 29}}')
    (data / "notes.nii.gz").write_text("a text file with a volume's name")
    (tmp_path / "secret.nii.gz").write_bytes((dev_data_dir / "ctich_054.nii.gz").read_bytes())
    oversized = tmp_path / "big.nii.gz"
    oversized.write_bytes(b"\x1f\x8b" + bytes(1_500_000))
    not_an_image = tmp_path / "report.txt"
    not_an_image.write_text("not an image\n" * 100)

    arguments = ["--data-dir", str(data), "--max-upload-mb", "1", "--model", str(tmp_path / "no-default-model"),
                 "--sample", str(dev_data_dir / "ctich_054.nii.gz")]
    with ViewerServer(arguments, log=tmp_path / "server.log") as server, \
            headless_chromium(tmp_path / "profile", tmp_path / "downloads") as driver:
        page = ViewerPage(driver, server.url)

        for name, reason in ((str(tmp_path / "secret.nii.gz"), "absolute path"),
                             ("../secret.nii.gz", "could leave the data folder"),
                             ("models/../../secret.nii.gz", "could leave the data folder")):
            assert page.trigger("ppr_load_data_file", [name]) is False
            assert reason in page.wait_for_status(repr(name))
        assert page.trigger("ppr_load_data_file", ["notes.nii.gz"]) is False
        page.wait_for_status("notes.nii.gz is not a NIfTI")
        assert page.element("input-name").text == "No scan loaded"

        page.upload(oversized)
        assert page.wait_for_status("larger than").startswith(
            "big.nii.gz is 1.5 MB, larger than this viewer's upload limit of 1.0 MB")
        page.upload(not_an_image)
        page.wait_for_status("report.txt is not a NIfTI")
        assert page.element("input-name").text == "No scan loaded"

        # A detection that fails shows why, whether it fails before the detector starts or inside it.
        page.click("load-sample")
        page.wait_for_status("Loaded ctich_054")
        page.click("detect-button")
        page.wait_for_status("No model bundle was found")
        driver.execute_script("window.trame.state.update({model_choice: 'models/broken'})")
        page.wait_until(lambda: "broken" in page.element("model-card").text, "the broken bundle's card")
        page.click("detect-button")
        message = page.wait_for_status("Detection failed", timeout_seconds=120)
        assert "has no checksums.json" in message
        assert not page.running()

        # Still serving: the page loads a scan again.
        page.click("load-sample")
        page.wait_for_status("Loaded ctich_054")
        assert server.answers_http()
    assert server.process.returncode == 0
