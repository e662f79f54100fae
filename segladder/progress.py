"""Progress bars with ETA for long work, and a parallel map that drives one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")

console = Console(stderr=True)


def progress_bar(*, disable: bool = False, transient: bool = False) -> Progress:
    """A rich progress bar showing count, percentage, elapsed time and ETA on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=transient,
    )


def default_workers() -> int:
    """Worker processes to use by default: the CPUs this process may run on, 1 to 8."""
    return max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    description: str = "working",
    progress: bool = True,
    total: int | None = None,
    advance: Callable[[R], int] | None = None,
) -> Iterator[R]:
    """Apply `fn` to `items` in worker processes, yielding results as they complete, with a progress bar.

    When an item is a chunk of work, `total` is the bar's length in units and `advance(result)` says
    how many units one result completes. With one worker everything runs in this process, which
    keeps tracebacks and debuggers simple.
    """
    workers = default_workers() if workers is None else max(1, workers)
    total = len(items) if total is None else total
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(description, total=total)
        if workers == 1 or len(items) <= 1:
            for item in items:
                result = fn(item)
                bar.advance(task, advance(result) if advance else 1)
                yield result
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = set()
            it = iter(items)
            try:
                # Keep a bounded number of tasks in flight so memory does not grow with the dataset.
                for item in _take(it, workers * 2):
                    pending.add(pool.submit(fn, item))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        result = fut.result()
                        bar.advance(task, advance(result) if advance else 1)
                        yield result
                        for item in _take(it, 1):
                            pending.add(pool.submit(fn, item))
            except BaseException:
                # Interrupted or failed: drop queued work instead of finishing it before the error shows.
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _take(it: Iterator[Any], n: int) -> Iterable[Any]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return
