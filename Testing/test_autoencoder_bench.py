"""``python -m ppr bench --method ae``: PPR vs the autoencoder, training memory and inference time,
measured on the CPU at a tiny size (figures only: the test checks they are there and plausible)."""

from __future__ import annotations

import json

import pytest

from ppr.__main__ import main


@pytest.mark.slow
def test_bench_method_ae_prints_training_memory_and_inference_time_of_both(capsys) -> None:
    code = main(["bench", "--method", "ae", "--device", "cpu", "--size", "32", "--m", "2", "--tile", "32",
                 "--ppr-batch", "16", "--crop", "16", "--volumes-per-step", "2", "--train-steps", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "ae" and report["size"] == 32 and report["device"] == "cpu"
    for key in ("training_peak_memory_mb", "training_seconds_per_step"):
        assert set(report[key]) == {"ppr_sampled", "ppr_dense", "ae"}
        assert all(value > 0 for value in report[key].values())
    # peak RSS of a training run is at least what the process held when it started
    for name, peak in report["training_peak_memory_mb"].items():
        assert peak >= report["training_rss_start_mb"][name]
    assert report["training_batch"]["ae"] == "2 volumes of 32^3"
    for key in ("inference_seconds_per_volume", "inference_peak_memory_mb"):
        assert set(report[key]) == {"ppr", "ae"} and all(value > 0 for value in report[key].values())
    assert report["ae_post_filter"] == "erosion"
    assert report["parameters"]["ae"] > report["parameters"]["ppr"] > 0


def test_bench_method_ae_refuses_a_size_the_autoencoder_cannot_use(capsys) -> None:
    assert main(["bench", "--method", "ae", "--device", "cpu", "--size", "40", "--m", "2"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
