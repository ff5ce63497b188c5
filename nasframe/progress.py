"""Rich progress bars used by the runner and by long ``prepare`` steps."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def step_progress(console: Console, disable: bool = False, transient: bool = True) -> Progress:
    """A progress bar for a long step: ``with ctx.progress() as p: t = p.add_task("distil", total=n)``."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"),
                    console=console, disable=disable, transient=transient)


def search_progress(console: Console, disable: bool = False) -> Progress:
    """The search bar: trials done/total, failures, front size, hypervolume."""
    return Progress(SpinnerColumn(), TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("failed {task.fields[failed]}"),
                    TextColumn("front {task.fields[front]}"),
                    TextColumn("HV {task.fields[hv]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=disable)
