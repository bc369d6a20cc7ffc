"""The model card: read from a bundle's config.json (folder or .zip) without loading weights."""

from __future__ import annotations

import json
import zipfile

from PositionRegressionADLib.model_card import bundle_info, model_card_html, model_card_lines

CONFIG = {
    "format_version": 1,
    "network": {"m": 16, "patch_size": 31},
    "preprocess": {"size": 128, "spacing_mm": 2.0, "window_hu": [-20.0, 100.0], "equalize": True,
                   "prewindowed": True, "min_registration_metric": 0.2},
    "training": {"case_count": 16, "steps": 89, "seconds": 420.7, "final_loss": 0.2324, "final_val_loss": 0.2413,
                 "device": "cpu"},
    "versions": {"ppr": "0.1.0", "torch": "2.13.0"},
    "created": "2026-11-23T01:48:00+00:00",
}


def _bundle_folder(tmp_path, calibrated: bool):
    folder = tmp_path / "ppr-test-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    files = {"weights.pt": "x", "config.json": "y", "reference.nii.gz": "z"}
    if calibrated:
        files["calibration.npz"] = "w"
    (folder / "checksums.json").write_text(json.dumps({"algorithm": "sha256", "files": files}))
    return folder


def test_a_bundle_folder_is_described_in_plain_sentences(tmp_path):
    lines = model_card_lines(bundle_info(_bundle_folder(tmp_path, calibrated=True)))
    assert lines == [
        "Network width m = 16, patches of 31³ voxels.",
        "Model grid 128³ at 2.0 mm; window -20.0 to 100.0 HU (for scans exported in that window).",
        "Trained on 16 healthy scans, 89 steps, 7 min on cpu.",
        "Final loss 0.232, validation 0.241.",
        "Calibrated on healthy scans.",
        "Made 2026-11-23T01:48:00+00:00 with ppr 0.1.0, torch 2.13.0.",
    ]


def test_a_zipped_bundle_reads_the_same(tmp_path):
    folder = _bundle_folder(tmp_path, calibrated=False)
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in folder.iterdir():
            handle.write(file, arcname=f"ppr-test-model/{file.name}")
    info = bundle_info(archive)
    assert info["network"] == {"m": 16, "patch_size": 31}
    assert info["calibrated"] is False
    assert "Not calibrated." in model_card_html(archive)


def test_a_missing_or_broken_bundle_says_what_is_wrong(tmp_path):
    assert "not found at" in model_card_html(tmp_path / "nowhere")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    assert "not a readable model bundle" in model_card_html(broken)


def test_names_are_escaped_in_the_rich_text(tmp_path):
    folder = tmp_path / "<i>odd&model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    card = model_card_html(folder)
    assert card.startswith("<b>&lt;i&gt;odd&amp;model</b><br>")
