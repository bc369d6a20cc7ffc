"""The intensity atlas: what density healthy heads have at each place of the model grid, and how
unusual a new scan's density is there (the intensity z-map).

Why. A position error is as coarse as the patch that carries it (31 voxels of 2 mm here): it says
that something in a 6 cm neighbourhood is unlike a healthy head, not which voxels. The scan's own
normalised intensity, against the same place in healthy heads, points at the voxels. Measured on
40 synthetic anomalies in 5 held-out healthy heads (validation; the model card has the table), the
anomaly map found them where the position z-map did not (voxel average precision inside brain and
skull 0.219 against 0.031); the position error keeps the patient-level signal (region scores) and
its own map.

What it is. A ``ppr.statistics.calibration.Calibration`` with unit "intensity", fitted the same way as
the position error's (robust median and spread per 8 mm block of pooled voxels, smoothed, floored),
over healthy model-space volumes smoothed with a Gaussian of ``DENSITY_SMOOTHING_VOXELS`` (single
voxels are noise: 2 mm voxels of a 1 mm scan still carry ~3-5 HU of it), over soft tissue only
(``soft_tissue_mask``). The intensity z is two-sided (``|z|``): denser than usual (fresh blood) and
less dense (oedema, infarct, air) both count. Its overlay threshold is that of the shown anomaly map
(``anomaly_map``): its 99th percentile in the reference's brain and skull over the calibration
scans, each held out (its intensity against the atlas of the other scans, its position error
against the calibration of the other calibration scans), like the position z's.

What it does not: read files, run the network, or decide what is shown (``ppr.workflows.detection``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.image.masks import bone_threshold_hu
from ppr.statistics.calibration import MIN_SCANS, Calibration, CalibrationConfig, fit_calibration, z_map

DENSITY_SMOOTHING_VOXELS = 1.0
BONE_MARGIN_MM = 4.0
ATLAS_CONFIG = CalibrationConfig(factor=4, samples_per_axis=2, smoothing_voxels=1.0, min_spread_intensity=0.01)


def density(volume: np.ndarray) -> np.ndarray:
    """A model-space volume (normalised intensity, z y x) smoothed the way the atlas sees it."""
    return scipy.ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), DENSITY_SMOOTHING_VOXELS)


def soft_tissue_mask(windowed_hu: np.ndarray, head_mask: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Where the atlas compares densities: this scan's head less its bone (HU at the top of the
    window) and ``BONE_MARGIN_MM`` around it (bool, model space).

    Why without bone: bone saturates the window and sits next to brain, so an atlas block at the
    inner table holds both, its spread is that of bone against brain, and blood along the skull
    (a subdural or epidural crescent) vanishes in it. Without bone and the partial-volume rim the
    blocks hold soft tissue only. Measured on the validation set (see ``anomaly_map``): voxel AP
    inside brain and skull 0.219 with a 4 mm margin, 0.204 with 2 mm, 0.168 with none, against
    0.134 with bone in the atlas; the crescents stay the hardest kind."""
    bone = np.asarray(windowed_hu) >= bone_threshold_hu(config)
    margin = int(round(BONE_MARGIN_MM / config.spacing_mm))
    if margin > 0 and bone.any():
        bone = scipy.ndimage.binary_dilation(bone, iterations=margin)
    return np.asarray(head_mask, dtype=bool) & ~bone


def intensity_z_map(volume: np.ndarray, tissue_mask: np.ndarray, atlas: Calibration) -> np.ndarray:
    """|z| of the scan's density against the atlas, per model voxel (float32), inside
    ``tissue_mask`` (``soft_tissue_mask``); 0 elsewhere and where the atlas has no statistics."""
    inside = np.asarray(tissue_mask, dtype=bool)
    return np.where(inside, np.abs(z_map(density(volume), atlas)), 0.0).astype(np.float32)


def fit_intensity_atlas(
    volumes: Sequence[np.ndarray],
    tissue_masks: Sequence[np.ndarray],
    case_names: Sequence[str],
    threshold_mask: np.ndarray,
    position_z_maps: Sequence[np.ndarray] = (),
    position_threshold_z: float | None = None,
    config: CalibrationConfig = ATLAS_CONFIG,
) -> Calibration:
    """The atlas of healthy model-space volumes (each over its ``soft_tissue_mask``), with the overlay
    threshold of the shown map: the ``config.overlay_percentile`` of held-out healthy values inside
    ``threshold_mask`` (the reference's brain and skull) and each scan's mask.

    Held out means each scan's |z| against the atlas of the *other* scans. With
    ``position_z_maps`` (the first ``len(position_z_maps)`` scans' position z-maps, each against a
    position calibration without that scan) and ``position_threshold_z``, the threshold is that of
    the anomaly map (``anomaly_map``) over those scans: the scans the network never saw. Without,
    the intensity |z|'s over all scans. The volumes are held at full size (n x 128^3 float32:
    160 MB for 20 scans)."""
    if len(volumes) < MIN_SCANS + 1:
        raise PPRError(f"An intensity atlas needs at least {MIN_SCANS + 1} healthy scans, got {len(volumes)}.")
    if not len(volumes) == len(tissue_masks) == len(case_names) or len(position_z_maps) > len(volumes):
        raise ValueError("one tissue mask and one case name per volume, and at most one position z-map each")
    if position_z_maps and position_threshold_z is None:
        raise ValueError("position_z_maps need position_threshold_z")
    smoothed = [density(volume) for volume in volumes]
    tissues = [np.asarray(mask, dtype=bool) for mask in tissue_masks]
    counted = range(len(position_z_maps)) if position_z_maps else range(len(smoothed))
    held_out = []
    for index in counted:
        others = [i for i in range(len(smoothed)) if i != index]
        atlas = fit_calibration([smoothed[i] for i in others], [case_names[i] for i in others], config,
                                [tissues[i] for i in others], unit="intensity")
        values = np.where(tissues[index], np.abs(z_map(smoothed[index], atlas)), 0.0)
        if position_z_maps:
            values = anomaly_map(values, position_z_maps[index], float(position_threshold_z))
        held_out.append(values[tissues[index] & np.asarray(threshold_mask, dtype=bool)])
    threshold = float(np.percentile(np.concatenate(held_out), config.overlay_percentile))
    atlas = fit_calibration(smoothed, case_names, config, tissues, unit="intensity")
    return dataclasses.replace(atlas, overlay_threshold_z=threshold)


def anomaly_map(intensity_z: np.ndarray, position_z: np.ndarray, position_threshold_z: float,
                where: np.ndarray | None = None) -> np.ndarray:
    """The shown anomaly map: the intensity |z|, raised where the position error is unusual too:
    ``|z_intensity| * (1 + max(z_position, 0) / position_threshold_z)`` (float32, model space),
    inside ``where`` only (detection: the reference's brain and skull in this head, where findings
    are looked for and the threshold is calibrated; 0 elsewhere: the scalp, face and neck vary
    between healthy heads more than 19 heads describe, and a scalp swelling beside a bleed is
    not the bleed). None: everywhere.

    Where the position error is ordinary (z <= 0) it is the intensity |z| itself, so the atlas's
    overlay threshold applies; where the network could not place the patch either (z at the position
    threshold) the same density deviation counts twice. Chosen on the validation set of the model card
    (40 synthetic anomalies of 0.3-104 mL in 5 held-out healthy heads; inside brain and skull; with
    the first atlas, bone in it): voxel average precision 0.134, best Dice 0.252, top 1 % touches
    the anomaly in 23 of 40, against 0.181 / 0.238 / 22 for the intensity |z| alone and 0.031 / 0.097
    / 16 for the position z; the sum and the maximum of the two (each over its threshold) were lower
    (0.067 / 0.191 / 21 and 0.059 / 0.179 / 18). With the soft-tissue atlas (``soft_tissue_mask``,
    4 mm margin): 0.219 / 0.285 / 32 of 40. In bone and its margin the map is 0: falling back to
    the position z there lowered it to 0.103 / 0.222 / 25; skull findings show on the position
    z-map and in the skull's region score.
    """
    if position_threshold_z <= 0:
        raise ValueError(f"position_threshold_z must be positive, got {position_threshold_z}")
    boost = 1.0 + np.maximum(np.asarray(position_z, dtype=np.float32), 0.0) / np.float32(position_threshold_z)
    values = (np.asarray(intensity_z, dtype=np.float32) * boost).astype(np.float32)
    return values if where is None else np.where(where, values, np.float32(0.0)).astype(np.float32)
