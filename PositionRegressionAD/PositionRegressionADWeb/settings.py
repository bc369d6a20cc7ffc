"""How the web viewer is set up: its data folder, default model bundle, sample scan and upload limit.

The bundled sample head CT is named here and nowhere else (``SAMPLE_DIR``). This module reads no
scan and starts nothing: ``__main__`` fills ``WebSettings`` from the command line, ``app`` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PositionRegressionADLib.detection_logic import default_model_path
from PositionRegressionADWeb.paths import SCAN_SUFFIXES
from PositionRegressionADWeb.uploads import DEFAULT_MAX_UPLOAD_MB

REPO_ROOT = Path(__file__).resolve().parents[2]
# The demo scan that ships with the extension (one CT-ICH case, CC BY 4.0, with its attribution).
SAMPLE_DIR = REPO_ROOT / "Resources" / "Sample"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def default_sample_path(sample_dir: Path = SAMPLE_DIR) -> Path | None:
    """The first scan file in the sample folder, or ``None`` when there is none."""
    if not sample_dir.is_dir():
        return None
    scans = sorted(path for path in sample_dir.iterdir()
                   if path.is_file() and path.name.lower().endswith(SCAN_SUFFIXES))
    return scans[0] if scans else None


@dataclass(frozen=True)
class WebSettings:
    """What the server operator chose; the page can change none of it.

    data_dir: the only folder the page may read scans and model bundles from (already resolved).
    model_path: the model bundle offered as "Default model".
    sample_path: the scan the "Load the sample" button opens (``None``: no sample button).
    max_upload_bytes: larger uploads are refused before any byte is stored.
    """

    data_dir: Path
    model_path: Path = default_model_path()
    sample_path: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
