"""Shared test settings: small CPU models, deterministic seeds."""

from __future__ import annotations

import pytest
import torch

TINY_BACKBONE = "resnet18d"  # same deep-stem family as the presets, ~11 M params: fast on CPU


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
