"""Dense (space-to-batch, tiled) inference gives the paper's one-patch-per-voxel numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppr.networks.inference import InferenceOptions, dense_forward, error_map, inference_network, patch_positions
from ppr.networks.network import PPRNet

SPACING_MM = 2.0


@pytest.fixture(scope="module")
def net() -> PPRNet:
    torch.manual_seed(3)
    network = PPRNet(m=3)
    network.train()
    with torch.no_grad():
        network(torch.rand(2, 1, 31, 31, 31))
    return network


def random_case(shape: tuple[int, int, int], seed: int, fill: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    volume = rng.random(shape).astype(np.float32)
    head = rng.random(shape) < fill
    head[:2] = False  # some empty slabs, so some tiles are skipped
    volume[~head] *= 0.1
    return volume, head


def direct_error_mm(net: PPRNet, volume: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """The definition, voxel by voxel: the patch centred on the voxel (background 0 padding)."""
    plain = inference_network(net, torch.device("cpu"))
    padded = np.pad(volume, 15)
    shape = np.asarray(volume.shape)
    errors = []
    with torch.no_grad():
        for z, y, x in voxels:
            patch = torch.from_numpy(padded[z:z + 31, y:y + 31, x:x + 31].copy())[None, None]
            predicted = plain(patch).flatten().numpy().astype(np.float64)
            errors.append(np.linalg.norm((predicted - (np.array([z, y, x]) + 0.5) / shape) * shape * SPACING_MM))
    return np.array(errors)


@pytest.mark.parametrize("shape, tile", [((21, 26, 17), 8), ((27, 20, 22), 12)])
def test_dense_equals_patches_at_every_head_voxel_across_tile_borders(net, shape, tile) -> None:
    # A sparse head keeps the patch path (one forward pass per voxel) fast; dense still runs tiles.
    volume, head = random_case(shape, seed=sum(shape), fill=0.04)
    dense = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", 1, "cpu", tile))
    patches = error_map(volume, head, net, SPACING_MM, InferenceOptions("patches", 1, "cpu", tile, batch=300))
    scale = max(shape) * SPACING_MM  # 1e-4 in normalised position units
    assert np.abs(dense - patches).max() <= 1e-4 * scale
    assert (dense[head] > 0).all()
    assert (dense[~head] == 0).all()


def test_error_map_is_the_definition_voxel_by_voxel(net) -> None:
    volume, head = random_case((23, 18, 20), seed=5)
    dense = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", 1, "cpu", 8))
    voxels = np.argwhere(head)[::301]
    assert np.allclose(dense[tuple(voxels.T)], direct_error_mm(net, volume, voxels), atol=1e-4 * 23 * SPACING_MM)


@pytest.mark.parametrize("stride, tile", [(2, 8), (4, 16)])
def test_strided_map_is_exact_on_its_grid_and_dense_equals_patches(net, stride, tile) -> None:
    volume, _ = random_case((18, 21, 17), seed=stride + tile)
    z, y, x = np.ogrid[:18, :21, :17]
    head = (z - 9) ** 2 + (y - 12) ** 2 + (x - 7) ** 2 < 36  # a compact head keeps the patch path short
    full = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", 1, "cpu", 8))
    dense = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", stride, "cpu", tile))
    patches = error_map(volume, head, net, SPACING_MM, InferenceOptions("patches", stride, "cpu", tile))
    tolerance = 1e-4 * 21 * SPACING_MM
    assert np.abs(dense - patches).max() <= tolerance
    on_grid = np.zeros_like(head)
    on_grid[::stride, ::stride, ::stride] = True
    assert np.abs(dense - full)[on_grid & head].max() <= tolerance
    assert (dense[~head] == 0).all()


def test_strided_map_between_grid_points_is_trilinear(net) -> None:
    volume, head = random_case((20, 20, 20), seed=11, fill=1.0)
    head[:] = True
    full = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", 1, "cpu", 8))
    preview = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", 4, "cpu", 8))
    # Voxel (5, 9, 14) sits at fractions (1/4, 1/4, 1/2) between grid points (4, 8, 12) and (8, 12, 16).
    corners = full[4:9:4, 8:13:4, 12:17:4]
    weights = [np.array([1 - f, f]) for f in (0.25, 0.25, 0.5)]
    expected = np.einsum("ijk,i,j,k->", corners, *weights)
    assert preview[5, 9, 14] == pytest.approx(expected, abs=1e-3)


def test_skipped_tiles_do_not_change_the_head_voxels_next_to_them(net) -> None:
    """Interpolation near a tile whose own voxels are all outside the head must still be right."""
    volume, _ = random_case((24, 24, 24), seed=2)
    head = np.zeros(volume.shape, dtype=bool)
    head[5:12, 3:8, 1:8] = True  # ends just before the tile border at 8
    everywhere = np.ones_like(head)
    for stride in (2, 4):
        skipping = error_map(volume, head, net, SPACING_MM, InferenceOptions("dense", stride, "cpu", 8))
        complete = error_map(volume, everywhere, net, SPACING_MM, InferenceOptions("dense", stride, "cpu", 8))
        assert np.abs(skipping - complete * head).max() <= 1e-4 * 24 * SPACING_MM


def test_space_to_batch_fills_every_position_of_a_tile(net) -> None:
    plain = inference_network(net, torch.device("cpu"))
    block = torch.rand(1, 1, 12 + 30, 8 + 30, 16 + 30)
    with torch.no_grad():
        full = dense_forward(plain, block, stride=1)
        assert full.shape == (1, 3, 12, 8, 16)
        starts = np.array([[0, 0, 0], [11, 7, 15], [5, 2, 9], [3, 6, 1]])
        direct = patch_positions(plain, block[0, 0], starts, batch=4, device=torch.device("cpu"))
    for (z, y, x), expected in zip(starts, direct):
        assert np.allclose(full[0, :, z, y, x].numpy(), expected, atol=1e-5)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="stride"):
        InferenceOptions(stride=3)
    with pytest.raises(ValueError, match="tile"):
        InferenceOptions(tile=10)
    with pytest.raises(ValueError, match="method"):
        InferenceOptions(method="fast")
