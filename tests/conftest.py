"""Shared test settings: small CPU models, deterministic seeds."""

from __future__ import annotations

import signal

import pytest
import torch

TINY_BACKBONE = "resnet18d"  # same deep-stem family as the presets, ~11 M params: fast on CPU


def tiny_recipe(
    *,
    size: int = 32,
    images: int = 4,
    batch: int = 2,
    backbone: str = "resnet10t",
    **keys: object,
) -> list[str]:
    """The tiny training recipe of the tests, as ``section.key=value`` overrides of the default
    recipe: ``images`` synthetic scenes of ``size`` px (crops of the same size), batches of
    ``batch``, one epoch on the CPU, no worker processes. ``keys`` adds or replaces keys,
    written with ``__`` for the dot: ``train__epochs=2`` → ``train.epochs=2``."""
    recipe = {
        "model.backbone": backbone,
        "data.dataset": "synthetic",
        "data.base_size": size,
        "data.crop_size": size,
        "data.num_workers": 0,
        "data.options": f"{{num_images: {images}, size: {size}, seed: 0}}",
        "train.batch_size": batch,
        "train.epochs": 1,
        "train.device": "cpu",
        "train.amp": "none",  # float32 on every machine (the default, auto, depends on the CPU)
    }
    recipe |= {key.replace("__", "."): value for key, value in keys.items()}
    return [f"{key}={_yaml(value)}" for key, value in recipe.items() if value is not None]


def _yaml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.fixture
def tiny() -> list[str]:
    """:func:`tiny_recipe` with its defaults."""
    return tiny_recipe()


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
