"""The live loss plot holds exactly the points of the run, in MRML nodes of the given scene."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core provides the MRML classes")

from PPRTrainingLib.loss_plot import LossPlot  # noqa: E402


def test_loss_plot_tables_hold_the_training_and_validation_points() -> None:
    scene = slicer.vtkMRMLScene()
    plot = LossPlot(scene)
    training = [(step, 1.0 / step) for step in range(1, 41)]
    validation = [(step, 2.0 / step) for step in range(10, 41, 10)]
    plot.update(training[:20], [])
    plot.update(training, validation)

    assert plot.chart.GetNumberOfPlotSeriesNodes() == 2
    train_table, val_table = plot.tables["training"], plot.tables["validation"]
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(train_table, "step"), [s for s, _ in training])
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(train_table, "loss"), [v for _, v in training])
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(val_table, "loss"), [v for _, v in validation])
    for index in range(2):
        series = plot.chart.GetNthPlotSeriesNode(index)
        assert series.GetXColumnName() == "step" and series.GetYColumnName() == "loss"
        assert series.GetTableNode() is plot.tables[["training", "validation"][index]]
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2


def test_empty_update_keeps_the_curve() -> None:
    plot = LossPlot(slicer.vtkMRMLScene())
    plot.update([(1, 0.5), (2, 0.4)], [(2, 0.6)])
    plot.update([(1, 0.5), (2, 0.4), (3, 0.3)], [])
    assert plot.tables["training"].GetNumberOfRows() == 3
    assert plot.tables["validation"].GetNumberOfRows() == 1
