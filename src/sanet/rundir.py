"""The layout of a training run directory, written down once (docs/architecture.md).

```
RUN/
  config.yaml            the resolved config the run was started with
  metrics.jsonl          one JSON record per log interval and validation
  metrics.json           summary of `sanet demo` (and of other drivers that write one)
  tensorboard/           TensorBoard events
  checkpoints/last.pt    full training state (resume); checkpoints/best.pt the best validation
  model/                 the best weights, ``save_pretrained`` (config.json + model.safetensors)
  plots/                 PNG curves, per-class IoU, confusion matrix, prediction panels
```

Every module that reads or writes a run directory asks a :class:`RunDir` for the path instead of
joining strings itself. This module imports nothing from sanet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; nothing is created until a writer asks for it."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "metrics.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def compare_run(self) -> Path:
        """``compare_run.json``: wall time so far and, once finished, the run's result in a
        ``sanet compare`` (``sanet.experiments.compare``)."""
        return self.root / "compare_run.json"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt``."""
        return self.checkpoints / f"{name}.pt"

    def plot(self, name: str) -> Path:
        """``plots/<name>`` (give the extension, e.g. ``"loss.png"``)."""
        return self.plots / name

    def has_checkpoint(self) -> bool:
        """True when a run was started here and saved ``last.pt`` (it can be resumed)."""
        return self.last.is_file()

    def weights_candidates(self) -> tuple[Path, ...]:
        """Where inference looks for weights, best first: ``model/``, ``best.pt``, ``last.pt``."""
        return self.model, self.best, self.last

    def available_weights(self) -> list[Path]:
        """The candidates that hold weights now: ``model/`` once its ``config.json`` is written
        (its last file: a run killed during its first save leaves the folder without it)."""
        return [
            c
            for c in self.weights_candidates()
            if c.is_file() or (c.is_dir() and (c / "config.json").is_file())
        ]

    @classmethod
    def containing(cls, path: str | Path) -> RunDir | None:
        """The run directory that ``path`` is (``RUN``) or holds weights of (``RUN/model`` or a
        file in it, ``RUN/checkpoints/*.pt``), recognised by its ``config.yaml``; ``None`` for a
        model saved outside a run."""
        path = Path(path)
        if (path / "config.yaml").is_file() and path.is_dir():
            return cls(path)
        for root in (path.parent, path.parent.parent):
            run = cls(root)
            if run.config.is_file() and any(
                path == c or c in path.parents for c in run.weights_candidates()
            ):
                return run
        return None

    def other_weights(self, damaged: str | Path) -> list[Path]:
        """The weights of this run that exist and are not (and do not hold) ``damaged``: what to
        use instead of a damaged file."""
        damaged = Path(damaged)
        return [c for c in self.available_weights() if c != damaged and c not in damaged.parents]

    def clashing_files(self) -> list[Path]:
        """Files at this layout's paths that a run did not write, which a run started here would
        replace: a ``config.yaml`` without the sections every run's holds (e.g. the recipe
        itself, with ``--out .``), and a file where the layout has a folder. Other files in the
        folder are left alone (e.g. ``eval/`` or ``model.onnx`` written beside a run)."""
        folders = (self.tensorboard, self.checkpoints, self.model, self.plots)
        found = [p for p in folders if p.exists() and not p.is_dir()]
        if self.config.exists() and not _is_run_config(self.config):
            found.append(self.config)
        return sorted(found)

    def resume_command(self, cli: bool = True) -> str:
        """What continues this run: the ``sanet train`` command, or (``cli=False``) the Python
        call. Messages pass ``cli=errors.speaks_cli()`` to speak the caller's language (this
        module imports nothing from sanet)."""
        if cli:
            return f"sanet train {self.config} --out {self.root} --resume"
        return f"sanet.train({str(self.config)!r}, out={str(self.root)!r}, resume=True)"


# the sections every run's config.yaml has held (later versions added more, e.g. eval)
_RUN_SECTIONS = ("model", "loss", "data", "train")


def _is_run_config(path: Path) -> bool:
    """A ``config.yaml`` that a run wrote: every section, each a mapping."""
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in _RUN_SECTIONS)
