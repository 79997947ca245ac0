"""Progress bars on stderr (Rich); `quiet()` turns them off for logs and tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)
_quiet = bool(os.environ.get("DPMED_QUIET"))


def quiet(value: bool = True) -> None:
    """Turn progress displays off (True) or on again."""
    global _quiet
    _quiet = value


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=_quiet,
        transient=True,
    )


def progress_bar(items: Sequence[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items` while showing a bar."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total or len(items), status="")
        for item in items:
            yield item
            progress.advance(task)


class _NoDisplay:
    def update(self, _renderable) -> None:
        pass


@contextlib.contextmanager
def live_display(renderable) -> Iterator[Live | _NoDisplay]:
    """A live-updating panel on stderr (or nothing when quiet): `.update(renderable)`."""
    if _quiet:
        yield _NoDisplay()
        return
    with Live(renderable, console=console, transient=True) as live:
        yield live
