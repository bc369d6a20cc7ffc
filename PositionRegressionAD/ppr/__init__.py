"""Patch Position Regression (PPR) core: preprocessing, network, training, inference.

Pure torch / numpy / SimpleITK. This package never imports ``slicer`` so it runs the same in
Slicer's Python, in ``PythonSlicer`` subprocesses, in plain CPython and on a GPU machine.
"""

__version__ = "0.1.0"
