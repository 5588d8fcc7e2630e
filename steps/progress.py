"""Progress bars for long steps (training epochs, calibration, benchmarks), shown in the step's log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def epoch_progress(label: str, total: int) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A rich progress bar over epochs; yields the ``progress(epoch, metrics)`` callback ``fit`` takes."""
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task(label, total=total, status="")

        def update(epoch: int, metrics: dict[str, float]) -> None:
            status = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            bar.update(task, completed=epoch + 1, status=status)

        yield update


@contextmanager
def count_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` items; yields ``advance(n)``."""
    columns = (TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
