"""Progress bars and per-stage status lines (rich), silent when disabled."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, status: str = "", steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, status=status)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A bar with a free-text status (loss, accuracy) on the right."""
    if not enabled:
        yield _Bar(None, None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, status=""))


@contextlib.contextmanager
def stage(name: str, enabled: bool = True, times: dict | None = None,
          reused: bool | None = None) -> Iterator[None]:
    """Time a pipeline stage: one "✓ name (s)" status line when `enabled`, and
    `times[name] = {"seconds": s}` (with "reused" when given) for the report."""
    start = time.perf_counter()
    yield
    seconds = round(time.perf_counter() - start, 2)
    if times is not None:
        times[name] = {"seconds": seconds, **({} if reused is None else {"reused": reused})}
    if enabled:
        note = " [dim](reused)[/dim]" if reused else ""
        console.print(f"[green]✓[/green] {name}{note} [dim]({seconds:.1f}s)[/dim]")
