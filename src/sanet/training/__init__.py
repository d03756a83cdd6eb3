"""Training: the step-level machinery (``engine``), process state (``runtime``), the data
loaders (``loaders``), the run's logs (``runlog``), resuming (``resume``) and a whole run from a
config (``trainer``). Drivers built on runs are in :mod:`sanet.experiments`."""
