"""Qt-free logic of the Position Regression AD module: detection on a vtkMRMLScene and its results.

One file per job: ``process`` (child process, progress, cancel), ``detection_logic`` (the Logic),
``results`` (result nodes in the scene) with ``report``, ``skull_surface``, ``candidates``,
``colormap`` and ``geometry``, ``rendering`` (offscreen PNGs), ``scene_io`` (scenes without the
application, .mrb), ``batch`` (command line), ``devices`` and ``model_card`` (what the widget shows),
``testing`` (synthetic head and fake detector for tests). Nothing here imports Qt, so the same code
runs in Slicer, in slicer-core tests, in batch and in a web viewer.

Submodules are imported where they are used, so ``import PositionRegressionADLib`` stays cheap.
"""
