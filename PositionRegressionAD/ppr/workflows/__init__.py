"""Layer 4, workflows: model bundles, detection of one scan, training and calibrating a bundle from
scan files, the evaluation run (cache, tables, plots), MOOD challenge outputs.

Imports every layer below it (statistics, networks, image), never ``ppr.cli``.
"""
