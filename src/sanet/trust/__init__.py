"""Trust in a model's answers: fitting a calibration and its unsure threshold (``calibration.py``),
where the model keeps it (``store.py``), the label audit and ``rank``'s scores (``audit.py``) and
their pictures (``plots.py``).

What a :class:`~sanet.inference.Predictor` applies (the stored temperature and threshold) is
the small record in :mod:`sanet.inference.confidence`; fitting and storing it live here
(docs/trust.md). The verbs are :func:`sanet.api.calibration.calibrate` and
:mod:`sanet.api.audit`.
"""
