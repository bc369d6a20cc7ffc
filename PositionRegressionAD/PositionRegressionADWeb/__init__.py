"""The web viewer of Position Regression AD: Detect anomalies in head CT from a browser.

A UI peer of the Slicer module's widget built on trame-slicer (Slicer's MRML views rendered on the
server), on the same ``PositionRegressionADLib`` calls. Start it with::

    python -m PositionRegressionADWeb --data-dir DIR [--host 127.0.0.1] [--port 8080]

One file per job: ``paths`` (names the page may use under --data-dir), ``uploads`` (size limit and
type check), ``settings`` (what the operator chose, the sample scan), ``session`` (scan, detection,
results and downloads through the Lib), ``app`` (the trame page), ``__main__`` (command line).
Submodules are imported where they are used, so ``import PositionRegressionADWeb`` stays cheap.
"""
