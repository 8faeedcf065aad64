"""Serving predictions: the job a request asks for (``jobs``), a version's calibrated thresholds and abstained
classes (``calibration``), the one prediction path (``predict``), the detectors a server holds and which one
serves each project (``pool``), and handing a new version's predictions to Label Studio (``publish``)."""
