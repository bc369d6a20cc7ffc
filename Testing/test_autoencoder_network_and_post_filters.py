"""The autoencoder baseline's network and residual map: shapes, grid refusal, post-filters, head mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppr.networks.autoencoder import AutoEncoder3D, check_grid, post_filter, reconstruct, residual_map
from ppr.errors import PPRError


def test_reconstruction_has_the_input_shape_and_lies_in_unit_range() -> None:
    torch.manual_seed(0)
    net = AutoEncoder3D(m=2)
    x = torch.rand(2, 1, 32, 48, 16)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert net.stride == 16


def test_width_scales_the_channels() -> None:
    narrow, wide = AutoEncoder3D(m=2), AutoEncoder3D(m=4)
    assert narrow.encoder[0][0].out_channels == 2 and wide.encoder[0][0].out_channels == 4
    assert narrow.encoder[3][0].out_channels == 16 and wide.encoder[3][0].out_channels == 32
    # the spatial bottleneck: a coarse map, 1/16 of the grid per axis, m channels by default
    code = narrow.encoder(torch.zeros(1, 1, 32, 32, 32))
    assert tuple(code.shape) == (1, 2, 2, 2, 2)


def test_grids_not_divisible_by_the_stride_are_refused_with_a_clear_message() -> None:
    check_grid((32, 64, 128), 16)
    with pytest.raises(PPRError, match="multiples of 16.*--size"):
        check_grid((32, 40, 32), 16)
    volume = np.zeros((40, 40, 40), np.float32)
    with pytest.raises(PPRError, match="multiples of 16"):
        residual_map(volume, volume > 0, AutoEncoder3D(m=2), "none", "cpu")


def _single_hot_voxel(shape=(32, 32, 32), at=(16, 16, 16)) -> np.ndarray:
    values = np.zeros(shape, np.float32)
    values[at] = 1.0
    return values


@pytest.mark.parametrize("kind", ["erosion", "median"])
def test_post_filters_remove_a_single_hot_voxel_but_keep_a_lesion_sized_one(kind: str) -> None:
    assert post_filter(_single_hot_voxel(), kind).max() == 0.0
    block = np.zeros((32, 32, 32), np.float32)
    block[12:19, 12:19, 12:19] = 0.7  # 7^3: larger than the 5^3 filter
    filtered = post_filter(block, kind)
    assert filtered[15, 15, 15] == pytest.approx(0.7)
    assert filtered.sum() > 0.0


def test_no_post_filter_keeps_the_hot_voxel_and_unknown_filters_are_refused() -> None:
    assert post_filter(_single_hot_voxel(), "none")[16, 16, 16] == 1.0
    with pytest.raises(PPRError, match="erosion, median, none"):
        post_filter(_single_hot_voxel(), "gaussian")


def test_residual_map_filters_the_residual_and_is_zero_outside_the_head() -> None:
    torch.manual_seed(0)
    net = AutoEncoder3D(m=2)
    volume = np.full((32, 32, 32), 0.5, np.float32)
    volume[16, 16, 16] = 1.0  # one voxel the smooth reconstruction cannot follow
    head = np.zeros(volume.shape, bool)
    head[4:28, 4:28, 4:28] = True
    raw = residual_map(volume, head, net, "none", "cpu")
    eroded = residual_map(volume, head, net, "erosion", "cpu")
    median = residual_map(volume, head, net, "median", "cpu")
    reconstruction = reconstruct(volume, net, torch.device("cpu"))
    assert raw[16, 16, 16] == pytest.approx(abs(1.0 - reconstruction[16, 16, 16]), abs=1e-6)
    # the hot voxel stands out of the raw residual; after either filter it does not
    def peak(values: np.ndarray) -> float:
        return float(values[16, 16, 16] - np.median(values[head]))

    assert peak(raw) > 0.2
    assert abs(peak(eroded)) < 0.1 * peak(raw)
    assert abs(peak(median)) < 0.1 * peak(raw)
    for values in (raw, eroded, median):
        assert values.dtype == np.float32 and values.shape == volume.shape
        assert np.all(values[~head] == 0.0)
        assert np.all(values[head] >= 0.0)
