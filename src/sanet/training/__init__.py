"""Training: the step-level machinery (``engine``), process state (``runtime``), the run's
logs (``runlog``), a whole run from a config (``trainer``), and drivers built on it (``demo``,
``sweep``)."""
