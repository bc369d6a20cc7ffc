"""Layer 1, images: reading and checking scans, geometry, registration, masks, intensity and the
preprocessing that places a scan in model space. SimpleITK / numpy / SciPy / pydicom; no torch.

Imports only ``ppr.config`` and ``ppr.errors`` from the rest of ppr.
"""
