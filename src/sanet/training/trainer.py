"""A training run from a :class:`~sanet.config.Config`: one process, CPU/GPU, or one rank of a
``torchrun`` job (PyTorch DDP). Owns the run directory, checkpoints, resume and signals.

The run directory's layout is :class:`~sanet.rundir.RunDir`'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sanet._files import atomic_torch_save
from sanet.config import Config, save_config
from sanet.errors import NonFiniteLossError, TrainingInterrupted, UsageError, plain_worker_errors
from sanet.inference.predictor import evaluate_pairs
from sanet.inference.protocol import EvalProtocol
from sanet.losses import SANetLoss
from sanet.models.card import recipe_record
from sanet.models.registry import build_model, load_model
from sanet.rundir import RunDir
from sanet.training import engine
from sanet.training.loaders import build_data, make_loaders
from sanet.training.resume import (
    how_to_resume,
    read_resume_checkpoint,
    refuse_started_run,
    remove_interrupted_writes,
)
from sanet.training.runlog import RunLog, TrainerCallbacks
from sanet.training.runtime import (
    StopFlag,
    resolve_precision,
    rng_state,
    run_precision,
    seed_everything,
    set_rng_state,
    set_threads,
    setup_distributed,
)

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0  # current epoch
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0  # optimiser steps done in total
    best_miou: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Builds everything a run needs from ``cfg`` and trains it (``fit``).

    A ``run_dir`` that holds a run (``checkpoints/last.pt``) is continued with ``resume=True``
    and otherwise refused (:class:`~sanet.errors.OutputExistsError`): nothing of it is touched.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        callbacks: TrainerCallbacks | None = None,
    ) -> None:
        self.cfg, self.run = cfg, RunDir(run_dir)
        if not resume:  # a fresh start here would cut that run's metrics.jsonl
            refuse_started_run(self.run, "choose another run directory")
        self.callbacks = callbacks or TrainerCallbacks()
        self.run_dir = self.run.root
        t = cfg.train
        self.dist, self.device = setup_distributed(t.device)
        self.cfg, self.precision = resolve_precision(cfg, self.device)  # train.amp=auto
        cfg, t = self.cfg, self.cfg.train
        self.threads = set_threads(t.threads)
        seed_everything(t.seed, t.deterministic)
        self.micro_batch = _micro_batch(t.batch_size, self.dist.world_size, t.accumulate)
        train_set, val_set = build_data(cfg)
        self.train_set, self.val_set = train_set, val_set
        self.num_classes = cfg.model.num_classes or train_set.num_classes
        if self.num_classes != train_set.num_classes:
            raise UsageError(
                f"model.num_classes={self.num_classes} but dataset {cfg.data.dataset!r} has "
                f"{train_set.num_classes} classes. Set model.num_classes=0 to take the dataset's."
            )
        self.metadata = {
            "class_names": list(train_set.class_names),
            "palette": [list(c) for c in train_set.palette],
        }
        self.train_loader, self.val_loader, self.sampler = make_loaders(
            cfg, train_set, val_set, self.dist, self.micro_batch
        )
        self.val_protocol = validation_protocol(cfg)
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * t.accumulate)
        if self.steps_per_epoch == 0:
            raise UsageError(
                f"The training set has {len(train_set)} images: fewer than one step of "
                f"train.batch_size={t.batch_size}. Lower train.batch_size or add images."
            )
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self._build_model()
        self.state = RunState()
        self.best_result: dict[str, Any] | None = None  # the metrics of model/ (this process)
        self.log = None
        ckpt = read_resume_checkpoint(cfg, self.run, self.device) if resume else None
        if self.dist.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            remove_interrupted_writes(self.run)
            save_config(cfg, self.run.config)
            self.log = RunLog(self.run)
            if ckpt is None:  # a fresh start: drop what a run killed before its first
                self.log.truncate_after(0)  # checkpoint logged here
        if ckpt is not None:
            self.resume(ckpt, self.run.last)

    def _build_model(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        m = cfg.model
        model = build_model(
            m.name,
            backbone=m.backbone,
            num_classes=self.num_classes,
            output_stride=m.output_stride,
            pretrained_backbone=m.pretrained_backbone,
            freeze_backbone=m.freeze_backbone,
            options=m.options(),
        )
        if t.checkpointing:
            model.backbone.set_grad_checkpointing()
        engine.set_bn_momentum(model, t.bn_momentum)
        self.model_config = {"name": model.name, **model.config}
        if m.init_from:  # e.g. the VOC fine-tune starts from the train_aug run
            model.load_state_dict(load_model(m.init_from)[0].state_dict())
        model = engine.sync_batchnorm(model, self.dist.world_size, self.device).to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the bare model: its state_dict is what checkpoints hold
        lr = t.lr * t.batch_size / 16  # linear scaling with the global batch (Sec. 4 recipe)
        groups = engine.param_groups(model, lr, t.head_lr_mult, t.weight_decay, t.layer_decay)
        self.optimizer = engine.make_sgd(groups, lr, t.momentum)
        self.scheduler = engine.poly_schedule(
            self.optimizer, self.total_steps, t.poly_power, t.warmup_steps
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if t.amp == "fp16" else None
        # The datasets refused any label outside 0..K-1 and 255 when reading the masks (label
        # tables), so the loss skips its own check and makes no host sync per step.
        self.criterion = SANetLoss(cfg.loss.alpha, cfg.loss.beta, check_labels=False)
        wrapped: nn.Module = model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.net = torch.compile(wrapped) if t.compile else wrapped

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "metadata": self.metadata,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "state": self.state.__dict__.copy(),
        }

    def save(self, name: str) -> Path | None:
        """Atomically write ``checkpoints/{name}.pt`` (rank 0 only)."""
        if not self.dist.is_main:
            return None
        path = self.run.checkpoint(name)
        atomic_torch_save(self.checkpoint(), path)
        return path

    def resume(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore the training state of ``ckpt`` (read from ``path``)."""
        self.model.load_state_dict(ckpt["model"])
        engine.load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in ckpt["rng"].items()})
        self.state = RunState(**ckpt["state"])
        if self.log:
            self.log.truncate_after(self.state.global_step)
        logger.info(
            "Resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.global_step
        )

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``); returns the final summary."""
        t, s = self.cfg.train, self.state
        view = self.callbacks if self.dist.is_main else TrainerCallbacks()
        view.fit_start(self.total_steps, s.global_step)
        # A DataError in a DataLoader worker arrives wrapped in the worker's traceback text:
        # plain_worker_errors re-raises its own message (it names the file).
        with StopFlag() as stop, plain_worker_errors(), _finally(view.fit_end):
            while s.global_step < self.total_steps:
                self.sampler.set_epoch(
                    s.epoch, start=s.step_in_epoch * self.micro_batch * t.accumulate
                )
                view.epoch_start(s.epoch, t.epochs)
                finished_epoch = self._train_epoch(stop, view)
                if stop.signal:
                    raise self._interrupted(stop.signal, self.save("last"))
                if finished_epoch:
                    s.epoch, s.step_in_epoch = s.epoch + 1, 0
                done = s.global_step >= self.total_steps
                if done or (finished_epoch and t.val_every and s.epoch % t.val_every == 0):
                    self.validate()
                path = self.save("last")
                if stop.signal and not done and self.dist.world_size == 1:
                    # it came during the validation: stop now, not after one more step (under
                    # DDP the ranks agree at the next step instead, _should_stop)
                    raise self._interrupted(stop.signal, path)
            if not s.history or s.history[-1]["step"] < s.global_step:
                # finished, but stopped by a signal between its last step and the validation
                self.validate()
                self.save("last")
        if self.log:
            self.log.close()
        return {
            "run_dir": str(self.run_dir),
            "steps": s.global_step,
            "best_mIoU": s.best_miou,
            "history": s.history,
            # a signal that came after the last step (e.g. during the final validation): the
            # run is complete and saved, and the caller still has to stop (`sanet compare`)
            "stopped_by": stop.signal,
        }

    def _interrupted(self, signal: str, saved: Path | None) -> TrainingInterrupted:
        step = self.state.global_step
        return TrainingInterrupted(
            f"Stopped by {signal} after step {step}; saved {saved}. "
            f"Resume with: {how_to_resume(self.run)}",
            signal,
            step,
        )

    def _train_epoch(self, stop: StopFlag, view: TrainerCallbacks) -> bool:
        """Steps until the epoch ends, ``max_steps`` is reached or a signal asks to stop.

        Returns True when the epoch's data is exhausted."""
        t, s = self.cfg.train, self.state
        self.net.train()
        pending: list[tuple[engine.StepResult, list[int]]] = []  # steps since the last host sync
        micro: list[tuple[torch.Tensor, torch.Tensor]] = []
        indices: list[int] = []
        tick, images_seen = time.perf_counter(), 0
        for images, masks, idx in self.train_loader:
            micro.append(self._to_device(images, masks))
            indices += idx.tolist()
            if len(micro) < t.accumulate:
                continue
            result = engine.train_step(
                self.net, self.criterion, micro, self.optimizer, self.scaler, t.amp
            )
            self.scheduler.step()
            pending.append((result, indices))
            images_seen += len(indices) * self.dist.world_size
            micro, indices = [], []
            s.global_step, s.step_in_epoch = s.global_step + 1, s.step_in_epoch + 1
            view.step(s.global_step)
            last = s.global_step >= self.total_steps or s.step_in_epoch >= self.steps_per_epoch
            if s.global_step % t.log_every == 0 or last or stop.signal:
                rate = images_seen / max(time.perf_counter() - tick, 1e-9)
                self._sync(pending, view, rate)
                pending, tick, images_seen = [], time.perf_counter(), 0
            if self._should_stop(stop) or s.global_step >= self.total_steps:
                return s.step_in_epoch >= self.steps_per_epoch
            if s.step_in_epoch >= self.steps_per_epoch:
                return True
        return True

    def _to_device(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)

    def _should_stop(self, stop: StopFlag) -> bool:
        if self.dist.world_size == 1:
            return stop.signal is not None
        if self.state.global_step % self.cfg.train.log_every:
            return False  # ranks agree on stopping at log intervals, so all stop at the same step
        flag = torch.tensor([1.0 if stop.signal else 0.0], device=self.device)
        dist.all_reduce(flag)
        if flag.item() > 0 and stop.signal is None:
            stop.signal = "a signal on another rank"
        return stop.signal is not None

    def _sync(self, pending: list, view: TrainerCallbacks, rate: float) -> None:
        """The host sync of a log interval: non-finite check, loss logging."""
        finite = torch.stack([r.finite for r, _ in pending]).tolist()
        first_step = self.state.global_step - len(pending) + 1
        for offset, ok in enumerate(finite):
            if not ok and self.cfg.train.nonfinite == "stop":
                step, files = (
                    first_step + offset,
                    [self.train_set.files(i)[0] for i in pending[offset][1]],
                )
                last = self.run.last
                raise NonFiniteLossError(
                    f"Non-finite loss or gradients at step {step} (the step was not applied); "
                    f"batch files: {files}. Last good checkpoint: "
                    f"{last if last.is_file() else 'none yet'}. Lower train.lr, try train.amp=none, "
                    "check these files with `sanet check-data`, or set train.nonfinite=skip."
                )
        keys = list(pending[-1][0].loss_terms)
        means = torch.stack(
            [torch.stack([r.loss_terms[k] for k in keys]) for r, _ in pending]
        ).mean(0)
        values = dict(zip(keys, means.tolist(), strict=True))
        lr = self.scheduler.get_last_lr()[0]
        view.logged(self.state.global_step, {**values, "lr": lr, "images_per_s": rate})
        if self.log:
            skipped = finite.count(False)
            self.log.log(
                "train",
                self.state.global_step,
                **values,
                lr=lr,
                images_per_s=rate,
                epoch=self.state.epoch,
                skipped_nonfinite=skipped,
            )

    def validate(self) -> dict[str, Any]:
        """Validation under :attr:`val_protocol` on every rank's shard; counts all-reduced,
        best saved."""
        pairs = ((images, masks) for images, masks, _ in self.val_loader)
        cm = evaluate_pairs(self.net, pairs, self.num_classes, self.val_protocol, self.device)
        cm.all_reduce()
        result = cm.compute()
        s = self.state
        entry = {
            "epoch": s.epoch,
            "step": s.global_step,
            "pixAcc": result["pixAcc"],
            "mIoU": result["mIoU"],
        }
        s.history.append(entry)
        improved = result["mIoU"] > s.best_miou
        if improved:
            s.best_miou, self.best_result = result["mIoU"], result
        if self.log is not None:  # rank 0
            names = self.metadata["class_names"]
            self.log.log(
                "val",
                s.global_step,
                epoch=s.epoch,
                pixAcc=result["pixAcc"],
                mIoU=result["mIoU"],
                IoU=result["IoU"],
                best=improved,
            )
            self.log.plot_curves()
            self.callbacks.validated(entry, result, names)
            if improved:
                self.save("best")
                self.model.save_pretrained(self.run.model, self._model_metadata(entry, result))
                self.log.plot_validation(result["IoU"], cm.matrix_cpu(), names)
        return result

    def _model_metadata(self, entry: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """``model/config.json``'s metadata: class names and palette, and the model card's
        records of this validation and the recipe (:mod:`sanet.models.card`)."""
        d = self.cfg.data
        validation = {**entry, "IoU": result["IoU"], "dataset": d.dataset, "split": d.val_split}
        validation |= {"images": len(self.val_set), "protocol": self.val_protocol.to_dict()}
        return {
            **self.metadata,
            "validation": validation,
            "recipe": recipe_record(self.cfg.to_dict()),
        }


def validation_protocol(cfg: Config) -> EvalProtocol:
    """Validation during training: single scale at the images' own size with the run's sliding
    window (``eval.crop_size``/``stride``), as ``sanet eval --checkpoint RUN --single-scale``.
    The full ``eval`` section is ``sanet eval``'s: the paper's 6 scales × flip took ≈22× the
    single-scale time (docs/benchmarks.md), too much to repeat every few epochs."""
    p = run_precision(cfg)  # a recipe's train.amp=auto: what it means for the run here
    kw = {"amp": p.amp, "channels_last": p.channels_last}
    return EvalProtocol(crop_size=cfg.eval.crop_size, stride=cfg.eval.stride, **kw)


def _micro_batch(batch_size: int, world_size: int, accumulate: int) -> int:
    if batch_size % (world_size * accumulate):
        raise UsageError(
            f"train.batch_size={batch_size} (global) must be divisible by the number of processes "
            f"({world_size}) × train.accumulate ({accumulate})."
        )
    return batch_size // (world_size * accumulate)


@contextlib.contextmanager
def _finally(fn: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        fn()
