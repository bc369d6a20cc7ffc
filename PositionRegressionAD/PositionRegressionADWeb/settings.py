"""How the web viewer is set up: its data folder, default model bundle, sample scan and upload limit.

The sample head CT is the Lib's (``PositionRegressionADLib.demo.SAMPLE_SCAN``, the one place that
names it). This module reads no scan and starts nothing: ``__main__`` fills ``WebSettings`` from
the command line, ``app`` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PositionRegressionADLib.demo import SAMPLE_SCAN
from PositionRegressionADLib.detection_logic import default_model_path
from PositionRegressionADWeb.uploads import DEFAULT_MAX_UPLOAD_MB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def default_sample_path(sample: Path = SAMPLE_SCAN) -> Path | None:
    """The bundled sample scan, or ``None`` when this checkout has none."""
    return sample if sample.is_file() else None


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
