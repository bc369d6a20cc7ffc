"""Which places of the model grid a scan really measured: its field of view, less the cut edges.

A scan is placed on the model grid through its registration; where the grid lies outside the
scanned box the preprocessing fills in air. Where the box cuts through the head (a neck cut short,
a vertex just outside the last slice, a tilted slab whose faces cross the skull), the patch the
network sees around a place near the cut holds that invented air instead of the anatomy that is
really there, so its error says nothing about the scan: it would read as an anomaly in every
such scan, and as healthy variation in calibration. ``measured_mask`` says where the error can
be trusted: head voxels whose network context (a cube of ``context_voxels`` on each side) does not
meet a *cut*, i.e. a head voxel on the edge of the scanned box. Edges of the box that lie in air
(the usual case above the vertex and around the face) are not cuts: the air the preprocessing
fills in there is what the scanner would have seen.

What it does not: compute error maps, z-maps or scores (``ppr.workflows.detection``, ``ppr.statistics.scores``), or
decide what the model grid is (``ppr.image.preprocess``). Arrays are model-space (z, y, x).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from ppr.image import geometry


def scanned_box(image: sitk.Image, transform: sitk.Transform, model_grid: sitk.Image) -> np.ndarray:
    """Model-space places inside the scanned volume (bool, z y x): the input's voxel box brought
    onto the model grid through ``transform`` (model -> input points), nearest neighbour."""
    inside = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(image)
    placed = geometry.resample(inside, geometry.Grid.of(model_grid), transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(placed) > 0


def cut_edge(head_mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Head voxels next to a place outside the scanned box (face or edge neighbours): where the
    box cuts through the head."""
    head = np.asarray(head_mask, dtype=bool)
    outside = ~np.asarray(box, dtype=bool)
    return head & scipy.ndimage.binary_dilation(outside, np.ones((3, 3, 3), dtype=bool))


def measured_mask(head_mask: np.ndarray, box: np.ndarray, context_voxels: int) -> np.ndarray:
    """Head voxels whose network context stays clear of the box's cuts through the head.

    A voxel is dropped when a cut voxel lies within ``context_voxels`` along every axis of it
    (inside the cube of the patch centred on it). ``context_voxels`` 0 keeps the whole head.
    """
    head = np.asarray(head_mask, dtype=bool)
    cut = cut_edge(head, box)
    if context_voxels <= 0 or not cut.any():
        return head
    near_cut = scipy.ndimage.maximum_filter(cut.view(np.uint8), size=2 * int(context_voxels) + 1,
                                            mode="constant", cval=0) > 0
    return head & ~near_cut


def context_voxels(network) -> int:
    """How far (model voxels, per axis) the network looks beyond the voxel it scores: half the patch
    for PPR; for the autoencoder, one cell of its coarsest level (2^levels voxels), whose content
    every voxel of the cell depends on."""
    if hasattr(network, "patch_size"):
        return int(network.patch_size) // 2
    return 2 ** int(getattr(network, "levels", 0))
