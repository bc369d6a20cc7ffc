"""Layer 3, statistics: the per-place healthy error statistics (calibration), region scores, the
out-of-depth check, and the evaluation metrics (AUROC, AP, bootstrap, voxel AP and Dice). numpy /
SciPy / SimpleITK; no torch, no file formats other than ``calibration.npz``.

Imports ``ppr.networks`` and ``ppr.image`` (below it), never ``ppr.workflows`` or ``ppr.cli``.
"""
