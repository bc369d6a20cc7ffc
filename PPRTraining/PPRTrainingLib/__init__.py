"""Qt-free logic of the PPR Training module: train a model bundle from folders of healthy head CTs.

The training itself is ``python -m ppr train`` run in a subprocess (``training_process``); this
package finds the images (``data_folders``), follows the run's progress, stops it, writes a report
from the bundle's training log (``report``) and draws the live loss curves as MRML plot nodes in a
scene it is given (``loss_plot``, the only part that imports ``slicer``, and only its MRML
classes). ``logic.PPRTrainingLogic`` ties them together for the Slicer widget and for
``Scripts/train.py``. Nothing here imports ``qt`` or ``ctk``.
"""
