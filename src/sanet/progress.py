"""One look for every progress bar: description, bar, done/total, rate, elapsed and ETA."""

from __future__ import annotations

from typing import Any


def progress_bar(*extra: Any, unit: str = "it", enabled: bool = True, console: Any = None) -> Any:
    """A ``rich.progress.Progress`` with the shared columns; ``extra`` columns (text templates
    or column objects) go between the rate and the clock. A task's ``unit`` field overrides
    ``unit`` in its rate."""
    from rich import progress as p
    from rich.text import Text

    class RateColumn(p.ProgressColumn):
        def render(self, task: Any) -> Text:
            speed, name = task.finished_speed or task.speed, task.fields.get("unit", unit)
            return Text(f"{speed:.1f} {name}/s" if speed else f"? {name}/s")

    columns = [
        p.TextColumn("[bold]{task.description}"),
        p.BarColumn(bar_width=12),
        p.MofNCompleteColumn(),
        *([RateColumn()] if unit else []),
        *(p.TextColumn(c) if isinstance(c, str) else c for c in extra),
        p.TimeElapsedColumn(),
        p.TextColumn("ETA"),
        p.TimeRemainingColumn(),
    ]
    return p.Progress(*columns, console=console, disable=not enabled)
