"""Progress bars used by the runner and by long ``prepare`` steps.

In a terminal they are rich's live bars. Where rich cannot draw live the same calls
print a plain text line now and then (:class:`TextProgress`): in a Jupyter notebook
(rich would need ipywidgets and prints their warnings instead of a bar), every
:data:`TEXT_EVERY` seconds; to a file or a pipe (``nohup``, a CI log, ``2> log``),
where rich draws nothing until the step ends, every :data:`FILE_EVERY` seconds.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

#: seconds between two lines of a plain text progress in a notebook
TEXT_EVERY = 2.0
#: ... and to a file or a pipe (a log read later: fewer lines)
FILE_EVERY = 10.0


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 - any IPython oddity: not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _notebook(console: Console) -> bool:
    return bool(getattr(console, "is_jupyter", False)) or in_notebook()


def plain(console: Console) -> bool:
    """Whether progress on ``console`` must be plain text (no live display): a notebook, or
    output that is not a terminal (rich's bars would show nothing there until they end)."""
    return _notebook(console) or not console.is_terminal


def _every(console: Console) -> float:
    return TEXT_EVERY if _notebook(console) else FILE_EVERY


class TextProgress:
    """The part of rich's ``Progress`` API nasframe uses, as plain text lines: at most one
    line per task every :data:`TEXT_EVERY` seconds, and one when a task completes."""

    def __init__(self, label: str = "", disable: bool = False, file: Any = None,
                 fields: tuple[str, ...] = (), every: float = TEXT_EVERY):
        self.label, self.disable, self.fields, self.every = label, disable, fields, every
        self.file = file
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> TextProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for tid in list(self.tasks):
            self._line(tid, force=True)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.__exit__()

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                           "fields": dict(fields), "start": time.time(), "last": 0.0,
                           "printed": None}
        return tid

    def update(self, task: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None,
               **fields: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if description is not None:
            t["description"] = description
        t["fields"].update(fields)
        done = t["total"] is not None and t["completed"] >= t["total"]
        self._line(task, force=done)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _line(self, task: int, force: bool = False) -> None:
        if self.disable:
            return
        t = self.tasks[task]
        now = time.time()
        if not force and now - t["last"] < self.every:
            return
        total = f"/{t['total']:g}" if t["total"] is not None else ""
        extra = "  ".join(f"{k} {v}" for k, v in t["fields"].items() if k != "info" and v != "")
        info = t["fields"].get("info", "")
        text = (f"{self.label or t['description']} {t['completed']:g}{total}"
                + (f"  {extra}" if extra else "") + (f"  {info}" if info else "")
                + f"  ({now - t['start']:.0f} s)")
        if text == t["printed"]:
            return
        t["last"], t["printed"] = now, text
        print(text, file=self.file or sys.stderr, flush=True)


def step_progress(console: Console, disable: bool = False, transient: bool = True):
    """A progress bar for a long step: ``with ctx.progress() as p: t = p.add_task("distil", total=n)``."""
    if plain(console):
        return TextProgress(disable=disable, file=console.file, every=_every(console))
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"),
                    console=console, disable=disable, transient=transient)


def search_progress(console: Console, disable: bool = False):
    """The search bar: trials done/total, failures, front size, hypervolume."""
    if plain(console):
        return TextProgress("search", disable=disable, file=console.file, every=_every(console))
    return Progress(SpinnerColumn(), TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("failed {task.fields[failed]}"),
                    TextColumn("front {task.fields[front]}"),
                    TextColumn("HV {task.fields[hv]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=disable)


@contextlib.contextmanager
def status(console: Console, text: str, disable: bool = False) -> Iterator[Any]:
    """A spinner with ``text`` (a plain line where no live display is possible); yields an
    object with ``update(text)``."""
    if disable:
        yield _Silent()
        return
    if plain(console):
        print(text, file=console.file, flush=True)
        yield _Silent()
        return
    with console.status(text, spinner="dots") as s:
        yield s


class _Silent:
    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
