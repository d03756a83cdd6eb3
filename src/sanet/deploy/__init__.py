"""Deployment: ``export.py`` (one self-describing ONNX file, checked against PyTorch) and
``serve.py`` (a FastAPI app with a web page; limits and logging in ``limits.py``).

Nothing is imported here, so that ``import sanet.deploy.export`` does not need the ``[serve]``
extra and ``sanet.deploy.serve`` does not need the ``[export]`` one.
"""
