"""Run by tests/test_distributed.py under torchrun: `sanet train` through the real CLI, plus a
dump of this rank's final weights so the test can compare ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from sanet import cli
from sanet.training import trainer

_fit = trainer.Trainer.fit


def fit_and_dump(self: trainer.Trainer) -> dict:
    summary = _fit(self)
    rank = os.environ["RANK"]
    torch.save(self.model.state_dict(), Path(self.run_dir) / f"rank{rank}_weights.pt")
    return summary


trainer.Trainer.fit = fit_and_dump  # type: ignore[method-assign]
sys.exit(cli.main(sys.argv[1:]))
