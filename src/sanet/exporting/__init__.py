"""Exporting a trained model: one self-describing ONNX file checked against PyTorch
(``export.py``), extra uint8 graph outputs (``outputs.py``) and INT8 gated on accuracy
(``quantize.py``).

Nothing is imported here, so that ``import sanet.exporting.export`` needs only the ``[export]``
extra when it is used.
"""
