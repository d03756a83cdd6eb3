"""Run by tests/test_distributed.py under torchrun: `sanet train` through the real CLI, then a
dump of this rank's final weights (so the test can compare ranks) and of one DDP step on
micro-batch RANK of test_engine's accumulation example (so it can compare with accumulation)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import sanet
from sanet import cli
from sanet.training import engine, trainer

_fit = trainer.Trainer.fit


def fit_and_dump(self: trainer.Trainer) -> dict:
    summary = _fit(self)
    rank = int(os.environ["RANK"])
    torch.save(self.model.state_dict(), Path(self.run_dir) / f"rank{rank}_weights.pt")
    torch.save(ddp_step_on_micro_batch(rank), Path(self.run_dir) / f"rank{rank}_step.pt")
    return summary


def ddp_step_on_micro_batch(rank: int) -> dict[str, torch.Tensor]:
    """One DDP step of test_engine's TinySeg on its micro-batch ``rank`` (the group is up)."""
    from test_engine import TinySeg, micro_batches_with_unequal_valid_pixels

    torch.manual_seed(0)
    model = TinySeg()
    net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    micro = micro_batches_with_unequal_valid_pixels()[rank]
    engine.train_step(net, sanet.SANetLoss(), [micro], opt, scaler=None)
    return model.state_dict()


trainer.Trainer.fit = fit_and_dump  # type: ignore[method-assign]
sys.exit(cli.main(sys.argv[1:]))
