"""Layer 2, networks: PPR and the autoencoder baseline, scanner augmentation, inference (error
maps in model space) and the training loops. torch / numpy.

Imports ``ppr.image`` (below it); SimpleITK and pydicom only inside the functions that read scans,
so a bare GPU machine can train from cached volumes.
"""
