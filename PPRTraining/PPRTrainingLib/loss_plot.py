"""Live loss curves of a training run as MRML plot nodes in a scene.

One plot chart with two series (training loss per step, validation loss when evaluated), each on
its own table node, so the chart can be shown in any Slicer plot view. It takes the scene as an
argument and imports only Slicer's MRML classes (``slicer-core`` is enough): showing the chart
in the application layout is the widget's job, and reading the loss values is the logic's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LossPoints = Sequence[tuple[int, float]]


class LossPlot:
    """Training and validation loss in one plot chart.

    >>> plot = LossPlot(slicer.mrmlScene)  # doctest: +SKIP
    >>> plot.update(training=[(1, 0.30), (2, 0.28)], validation=[(2, 0.31)])
    >>> slicer.modules.plots.logic().ShowChartInLayout(plot.chart)
    """

    def __init__(self, scene, title: str = "PPR training loss"):
        import slicer

        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", title)
        self.chart.SetTitle(title)
        self.chart.SetXAxisTitle("step")
        self.chart.SetYAxisTitle("loss")
        self.tables = {}
        for name in ("training", "validation"):
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{title} ({name})")
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} loss")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName("loss")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.tables[name] = table

    def update(self, training: LossPoints, validation: LossPoints = ()) -> None:
        """Replace the curves with these (step, loss) points; an empty list leaves a curve as it is."""
        import slicer

        for name, points in (("training", training), ("validation", validation)):
            if len(points):
                values = np.asarray(points, dtype=float)
                slicer.util.updateTableFromArray(
                    self.tables[name], [values[:, 0], values[:, 1]], columnNames=["step", "loss"]
                )
