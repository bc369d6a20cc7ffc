"""Patch Position Regression (PPR) core: preprocessing, network, training, inference.

Pure torch / numpy / SimpleITK. This package never imports ``slicer`` so it runs the same in
Slicer's Python, in ``PythonSlicer`` subprocesses, in plain CPython and on a GPU machine.

Its subpackages are layers, each importing only those below it (``.importlinter`` at the
repository root holds the contract): ``image`` -> ``networks`` -> ``statistics`` -> ``workflows``
-> ``cli``; ``errors`` and ``config`` serve them all.
"""

__version__ = "0.1.0"
