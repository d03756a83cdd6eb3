"""Pictures: palettes, index PNGs, overlays and metric plots (``visualize.py``), and the paper's
figures (``figures.py``)."""
