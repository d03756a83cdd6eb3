"""Shared test settings: small CPU models, deterministic seeds."""

from __future__ import annotations

import signal

import pytest
import torch

TINY_BACKBONE = "resnet18d"  # same deep-stem family as the presets, ~11 M params: fast on CPU


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored after (tests of tiny tensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A ``save_pretrained`` folder of an untrained 3-class SANet-resnet18d with class names and
    a palette (what a run's ``model/`` holds), for the export and serve tests."""
    import sanet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    meta = {
        "class_names": ["background", "disc", "square"],
        "palette": [[0, 0, 0], [230, 25, 75], [60, 180, 75]],
    }
    model.save_pretrained(folder, metadata=meta)
    return folder


def interrupt_after(monkeypatch: pytest.MonkeyPatch, n_steps: int) -> None:
    """Deliver a real SIGINT to this process after the n-th optimiser step of a training run."""
    from sanet.training import engine

    real, calls = engine.train_step, []

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == n_steps:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(engine, "train_step", step)
