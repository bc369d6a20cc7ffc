"""Scanner augmentation (ppr.networks.augmentation) inside dense training crops (ppr.networks.training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppr.networks.augmentation import ScannerAugmentation, apply_curve, augment_hu, blurred, curve_on_device
from ppr.image.equalisation import EqualisationCurve
from ppr.networks.training import AugmentationContext, TrainConfig, TrainingVolume, _PaddedVolume, dense_crop

WINDOW = (-20.0, 100.0)
IDENTITY = ScannerAugmentation(sharpness=(0.0, 0.0), gain=(1.0, 1.0), offset_hu=(0.0, 0.0),
                               noise_sd_hu=(0.0, 0.0), fov_cut_probability=0.0)


def synthetic_volume(shape=(48, 48, 48)) -> tuple[TrainingVolume, EqualisationCurve]:
    """A ball of brain-like HU with a bright shell, mapped to [0, 1] by its own curve."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    head = r < 20
    hu = np.full(shape, WINDOW[0], dtype=np.float32)
    hu[head] = rng.normal(35.0, 6.0, head.sum())
    hu[(r >= 17) & head] = 100.0
    hu = np.clip(hu, *WINDOW).astype(np.float32)
    curve = EqualisationCurve.of(hu[head])
    volume = np.where(head, curve.apply(hu), 0.0).astype(np.float32)
    return TrainingVolume("ball", volume, head, hu), curve


def context(curve: EqualisationCurve, augmentation: ScannerAugmentation) -> AugmentationContext:
    return AugmentationContext(augmentation, curve, WINDOW, 35.0, 2.0)


def test_the_torch_curve_equals_numpy_interp_including_outside_its_range():
    curve = EqualisationCurve.of(np.random.default_rng(1).normal(30.0, 10.0, 5000).astype(np.float32))
    values = np.linspace(-40.0, 120.0, 1001).astype(np.float32)
    torch_values = apply_curve(torch.from_numpy(values), curve_on_device(curve, torch.device("cpu"))).numpy()
    assert np.abs(torch_values - curve.apply(values)).max() < 1e-5


def test_identity_augmentation_gives_back_the_crop_the_network_saw_without_it():
    volume, curve = synthetic_volume()
    plain = _PaddedVolume(volume, 7)
    augmented = _PaddedVolume(volume, 7, augmentation=context(curve, IDENTITY))
    block_a, targets_a, weights_a = dense_crop(plain, 16, 15, np.random.default_rng(5))
    block_b, targets_b, weights_b = dense_crop(augmented, 16, 15, np.random.default_rng(5))
    assert torch.equal(targets_a, targets_b) and torch.equal(weights_a, weights_b)
    assert torch.abs(block_a - block_b).max() < 1e-5


def test_offset_gain_and_noise_change_the_hu_as_drawn_and_stay_in_the_window():
    block = torch.full((20, 20, 20), 35.0)
    shifted = augment_hu(block, ScannerAugmentation(sharpness=(0, 0), gain=(1, 1), offset_hu=(5, 5),
                                                   noise_sd_hu=(0, 0)), WINDOW, 35.0, np.random.default_rng(0))
    assert torch.allclose(shifted, torch.full_like(block, 40.0))
    noisy = augment_hu(block, ScannerAugmentation(sharpness=(0, 0), gain=(1, 1), offset_hu=(0, 0),
                                                 noise_sd_hu=(4, 4)), WINDOW, 35.0, np.random.default_rng(0))
    assert float(noisy.std()) == pytest.approx(4.0, rel=0.05)
    bright = augment_hu(torch.full((8, 8, 8), 95.0), ScannerAugmentation(sharpness=(0, 0), gain=(1.2, 1.2),
                        offset_hu=(4, 4), noise_sd_hu=(0, 0)), WINDOW, 35.0, np.random.default_rng(0))
    assert float(bright.max()) == WINDOW[1]


def test_blur_is_stronger_across_slices_and_sharpening_does_the_opposite():
    rng = np.random.default_rng(2)
    noise = torch.from_numpy(rng.normal(0.0, 1.0, (32, 32, 32)).astype(np.float32))
    smooth = blurred(noise)
    # Neighbours along z (the slice axis) become more alike than neighbours along x.
    z_corr = float(torch.corrcoef(torch.stack([smooth[:-1].ravel(), smooth[1:].ravel()]))[0, 1])
    x_corr = float(torch.corrcoef(torch.stack([smooth[..., :-1].ravel(), smooth[..., 1:].ravel()]))[0, 1])
    assert z_corr > x_corr + 0.1
    sharpened = augment_hu(noise + 35.0, ScannerAugmentation(sharpness=(1, 1), gain=(1, 1), offset_hu=(0, 0),
                           noise_sd_hu=(0, 0)), (-1000.0, 1000.0), 35.0, rng)
    assert float(sharpened.std()) > 1.2 * float(noise.std())


def test_a_field_of_view_cut_empties_the_input_and_the_loss_below_it():
    volume, curve = synthetic_volume()
    cut_always = ScannerAugmentation(sharpness=(0, 0), gain=(1, 1), offset_hu=(0, 0), noise_sd_hu=(0, 0),
                                     fov_cut_probability=1.0, fov_keep_mm=(40.0, 40.0))
    padded = _PaddedVolume(volume, 7, augmentation=context(curve, cut_always))
    top = padded.head_top_index
    cut = int(round(top - 40.0 / 2.0))
    for seed in range(5):
        block, targets, weights = dense_crop(padded, 16, 15, np.random.default_rng(seed))
        centre_z = (targets[0, 0] * volume.volume.shape[0] - 0.5).round().long()
        assert not bool(weights[0][centre_z < cut].any())
        # Block slice b holds model z = first + b; everything below the cut is background.
        first = int(centre_z.min()) - 7
        below = max(0, cut - first)
        assert float(block[0, 0, :below].abs().max() if below else 0.0) == 0.0


def test_augmentation_is_refused_where_it_is_not_implemented():
    with pytest.raises(ValueError, match="dense PPR"):
        TrainConfig(steps=1, augment=True, mode="sampled")
    with pytest.raises(ValueError, match="dense PPR"):
        TrainConfig(steps=1, augment=True, method="ae")
