"""``sanet serve``: a FastAPI app with a web page around a :class:`~sanet.inference.Predictor`
(``app.py``), its limits (``limits.py``), middleware, answers and start-up checks.

Nothing is imported here, so that ``import sanet.serve.limits`` does not need the ``[serve]``
extra until the app is built.
"""
