"""What ``progress=True`` shows while a run trains: a progress bar with the loss, LR and speed,
and the per-class table of each validation (the trainer itself only logs and reports to
:class:`~sanet.training.runlog.TrainerCallbacks`; this is the view that draws them)."""

from __future__ import annotations

from typing import Any

from sanet.training.runlog import TrainerCallbacks


class TrainingView(TrainerCallbacks):
    """A ``rich`` progress bar over the run's steps (stdout) and a table per validation (stderr,
    beside the logs). One view can show several runs in turn (``sanet.compare``, the sweep)."""

    def __init__(self) -> None:
        from rich.console import Console

        from sanet.progress import progress_bar

        self.console = Console(stderr=True)
        fields = (
            "loss {task.fields[loss]:.3f} lr {task.fields[lr]:.1e} {task.fields[ips]:.1f} img/s"
        )
        self.bar = progress_bar(fields, unit=None)
        self.task: Any = None

    def fit_start(self, total_steps: int, done_steps: int) -> None:
        if self.task is not None:  # one view shows several runs in turn (compare, sweep)
            self.bar.remove_task(self.task)
        self.bar.start()
        fields = {"loss": float("nan"), "lr": float("nan"), "ips": 0.0}
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, **fields)

    def epoch_start(self, epoch: int, epochs: int) -> None:
        self.bar.update(self.task, description=f"epoch {epoch + 1}/{epochs}")

    def step(self, global_step: int) -> None:
        self.bar.update(self.task, completed=global_step)

    def logged(self, step: int, values: dict[str, float]) -> None:
        self.bar.update(self.task, loss=values["loss"], lr=values["lr"], ips=values["images_per_s"])

    def validated(self, entry: dict[str, Any], result: dict[str, Any], names: list[str]) -> None:
        from sanet.metrics import per_class_table

        title = f"Validation after epoch {entry['epoch']} (step {entry['step']})"
        self.console.print(per_class_table(result, names, title=title))

    def fit_end(self) -> None:
        self.bar.stop()


def training_view(progress: bool) -> TrainerCallbacks:
    """The view of ``progress=``: a :class:`TrainingView`, or callbacks that show nothing."""
    return TrainingView() if progress else TrainerCallbacks()
