"""PPRNet: a 31^3 patch reduces to one position, and on a volume the net is the patch net at stride 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ppr.networks.network import PPRNet, fold_spectral_norm, normalised_positions, position_loss, stem_conv


@pytest.fixture(scope="module")
def net() -> PPRNet:
    torch.manual_seed(0)
    network = PPRNet(m=4)
    network.train()
    with torch.no_grad():  # a few power iterations so the spectral norm state is not the initial one
        for _ in range(3):
            network(torch.rand(2, 1, 31, 31, 31))
    return fold_spectral_norm(network)


def test_a_31_patch_gives_one_position_per_patch() -> None:
    out = PPRNet(m=4)(torch.rand(5, 1, 31, 31, 31))
    assert out.shape == (5, 3, 1, 1, 1)


def test_volume_output_j_equals_the_patch_starting_at_4j(net: PPRNet) -> None:
    volume = torch.rand(1, 1, 47, 55, 39)
    with torch.no_grad():
        dense = net(volume)
        # (47 - 31) / 4 + 1 = 5, (55 - 31) / 4 + 1 = 7, (39 - 31) / 4 + 1 = 3 outputs per axis.
        assert dense.shape == (1, 3, 5, 7, 3)
        for j in [(0, 0, 0), (4, 6, 2), (2, 3, 1), (1, 5, 0)]:
            start = [4 * v for v in j]
            patch = volume[:, :, start[0]:start[0] + 31, start[1]:start[1] + 31, start[2]:start[2] + 31]
            assert torch.allclose(dense[0, :, j[0], j[1], j[2]], net(patch).flatten(), atol=1e-5)


def test_receptive_field_is_exactly_the_patch(net: PPRNet) -> None:
    volume = torch.rand(1, 1, 35, 35, 35)
    with torch.no_grad():
        before = net(volume)[0, :, 0, 0, 0].clone()
        outside = volume.clone()
        outside[0, 0, 31, 5, 5] += 10.0  # just past the patch starting at 0
        assert torch.equal(net(outside)[0, :, 0, 0, 0], before)
        for voxel in [(30, 30, 30), (0, 0, 0), (30, 0, 30)]:  # the patch's corners reach the output
            corner = volume.clone()
            corner[(0, 0, *voxel)] += 1000.0
            assert (net(corner)[0, :, 0, 0, 0] - before).abs().max() > 1e-6, voxel


def test_stem_as_2d_convolutions_equals_conv3d() -> None:
    x, weight, bias = torch.rand(3, 1, 20, 17, 13), torch.randn(6, 1, 4, 4, 4), torch.randn(6)
    assert torch.allclose(stem_conv(x, weight, bias), F.conv3d(x, weight, bias), atol=1e-5)


def test_folding_spectral_norm_keeps_the_numbers_and_the_original() -> None:
    torch.manual_seed(1)
    network = PPRNet(m=4)
    network.train()
    with torch.no_grad():
        network(torch.rand(2, 1, 31, 31, 31))
    folded = fold_spectral_norm(network)
    patch = torch.rand(4, 1, 31, 31, 31)
    network.eval()
    with torch.no_grad():
        assert torch.allclose(folded(patch), network(patch), atol=1e-6)
    assert not any(name.endswith("original") for name, _ in folded.named_parameters())
    assert any(name.endswith("original") for name, _ in network.named_parameters())


def test_spectral_norm_bounds_every_weight_matrix() -> None:
    torch.manual_seed(2)
    network = PPRNet(m=4)
    network.train()
    with torch.no_grad():
        for _ in range(30):  # power iteration converges
            network(torch.rand(1, 1, 31, 31, 31))
    folded = fold_spectral_norm(network)
    for name, parameter in folded.named_parameters():
        if name.endswith("weight"):
            sigma = torch.linalg.matrix_norm(parameter.reshape(parameter.shape[0], -1), ord=2)
            assert float(sigma) == pytest.approx(1.0, abs=0.02), name


def test_loss_is_the_mean_euclidean_distance() -> None:
    predicted = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 2.0]])
    assert float(position_loss(predicted, target)) == pytest.approx((5.0 + 1.0) / 2)
    weight = torch.tensor([0.0, 1.0])
    assert float(position_loss(predicted, target, weight)) == pytest.approx(1.0)


def test_normalised_position_is_the_voxel_centre_over_the_grid() -> None:
    positions = normalised_positions(torch.tensor([[0, 63, 127]]), (64, 64, 128))
    assert np.allclose(positions.numpy(), [[0.5 / 64, 63.5 / 64, 127.5 / 128]])


@pytest.mark.parametrize("size", [28, 30, 27])
def test_patch_sizes_that_cannot_reduce_to_one_voxel_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="patch_size"):
        PPRNet(m=4, patch_size=size)


def test_other_odd_patch_sizes_also_reduce_to_one_voxel() -> None:
    assert PPRNet(m=2, patch_size=35)(torch.rand(1, 1, 35, 35, 35)).shape == (1, 3, 1, 1, 1)
