"""Drivers built on training runs and models: ``sanet compare`` (``compare.py``), Fig. 4's sweep
(``sweep.py``), the out-of-fold label audit (``folds.py``), ``sanet bench`` (``bench.py``,
``measure.py``) and ``sanet demo`` (``demo.py``)."""
