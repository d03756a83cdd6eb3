"""The package's version (one definition; ``sanet.__version__`` and the exported files' metadata
read it). Imports nothing."""

__version__ = "0.1.0"
