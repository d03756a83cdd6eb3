"""Process-level state of a training run: joining a ``torchrun`` job, seeds, RNG snapshots
for exact resume, and the SIGINT/SIGTERM flag that lets a step finish before saving."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sanet.config import Config, override_hint
from sanet.devices import Precision, choose_precision, resolve_device
from sanet.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the ``torchrun`` process group when launched by it (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)  # a missing GPU is one clear line, before any work
    if device.type == "cuda":
        device = resolve_device(f"cuda:{d.local_rank if world > 1 else (device.index or 0)}")
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device


class StopFlag:
    """Records SIGINT/SIGTERM so the loop can finish its step, save and exit cleanly.

    Flags nest (``sanet compare`` holds one around its runs, each run's trainer its own): an
    inner flag starts with a signal the outer one already caught, and hands its own signal to
    the outer one when it exits, so a signal is never lost between them.

    Args:
        doing: what the process will do on a signal, for the log line.
    """

    def __init__(self, doing: str = "finishing this step, then saving checkpoints/last.pt") -> None:
        self.signal: str | None = None
        self.doing = doing
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # not the main thread (e.g. a notebook worker): no handler, Ctrl-C works as usual
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        outer = self._outer()
        if outer is not None and outer.signal:
            self.signal = outer.signal
        return self

    def _outer(self) -> StopFlag | None:
        owner = getattr(self._previous.get(signal.SIGTERM), "__self__", None)
        return owner if isinstance(owner, StopFlag) else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            # SLURM signals every process of a job step and torchrun forwards the SIGTERM it
            # gets: one request arrives twice. Only a second Ctrl-C means "stop now".
            return
        self.signal = signal.Signals(signum).name
        logger.warning("%s received: %s", self.signal, self.doing)

    def __exit__(self, *exc: Any) -> None:
        outer = self._outer()
        if outer is not None and self.signal and outer.signal is None:
            outer.signal = self.signal
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def exit_status(signal_name: str | None) -> int:
    """The exit status of a command stopped by ``signal_name``: 128 + its number, as a shell
    reports a process killed by it (SIGINT 130, SIGTERM 143); 130 when it is not known."""
    try:
        return 128 + int(signal.Signals[signal_name or ""])
    except KeyError:
        return 130


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.cpu() for c in state["cuda"]])


def set_threads(threads: int) -> int:
    """Pin torch's intra-op CPU thread count (``0`` keeps torch's default); returns the count.

    CPU kernels split float reductions by thread, so a run's numbers are bit-identical only for
    the same thread count on the same CPU type (docs/reproducibility.md). The count and the
    vector-kernel level ATen dispatched to (e.g. ``AVX2``) are logged with the run.
    """
    if threads < 0:
        raise UsageError(
            f"train.threads must be ≥ 0 (0: torch's default), got {threads}. "
            f"Set it to the number of cores to use, e.g. {override_hint('train.threads=2')}."
        )
    if threads:
        torch.set_num_threads(threads)
    count = torch.get_num_threads()
    logger.info(
        "torch CPU threads: %d; CPU kernels: %s", count, torch.backends.cpu.get_cpu_capability()
    )
    return count


def run_precision(cfg: Config, device: torch.device | None = None) -> Precision:
    """What ``cfg``'s ``train.amp`` and ``train.channels_last`` mean on ``device`` (default:
    the recipe's ``train.device``): :func:`~sanet.devices.choose_precision`."""
    t = cfg.train
    device = resolve_device(t.device) if device is None else device
    return choose_precision(t.amp, device, channels_last=t.channels_last)


def resolve_precision(cfg: Config, device: torch.device) -> tuple[Config, Precision]:
    """``cfg`` with ``train.amp`` and ``train.channels_last`` as they run on ``device``
    (``train.amp=auto``: :func:`~sanet.devices.choose_precision`), and the choice; logged, and
    recorded in the run's ``config.yaml`` (a resumed run on another kind of machine is refused
    when the choice would change its maths)."""
    t = cfg.train
    precision = run_precision(cfg, device)
    logger.info("Precision: %s", precision.describe())
    train = dataclasses.replace(t, amp=precision.amp, channels_last=precision.channels_last)
    return dataclasses.replace(cfg, train=train), precision


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True
