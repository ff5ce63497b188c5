"""A pool of worker processes that survives its tasks.

:class:`concurrent.futures.ProcessPoolExecutor` breaks for good when one worker
dies (every pending future fails with ``BrokenProcessPool``) and cannot stop a
task that hangs. :class:`WorkerPool` runs each task in one of ``workers``
spawned processes, each with its own pipe, and watches them:

* a worker that dies (``os._exit``, a segfault, the OOM killer) fails only
  its task (``died``, with the exit code or signal) and is replaced;
* a task that runs longer than ``timeout`` seconds has its worker killed and
  fails (``timeout``); the worker is replaced;
* an exception raised by the task is returned as ``error`` with its
  traceback text (the worker lives on);
* :meth:`shutdown` kills every worker at once (Ctrl-C, SIGTERM), so no process
  outlives the pool; a worker (and what its tasks fork) is killed by the kernel when
  the driver dies, ``kill -9`` included (:mod:`nasframe.lifeline`);
* an ``initializer`` (e.g. building the experiment) runs in each new worker
  before it takes a task, so a worker's start-up never counts against a
  task's time limit; a worker whose initializer fails or dies fails the next
  task with the reason (and is replaced).

Workers ignore SIGINT: a Ctrl-C in the terminal reaches the driver, which
stops them.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

#: how often the driver checks on its workers while waiting (seconds)
POLL = 0.2


@dataclass(frozen=True)
class Outcome:
    """How one task ended: ``ok`` (``value`` holds the result), ``error`` (the task
    raised; ``message`` holds the traceback text), ``died`` or ``timeout``."""

    status: str
    value: Any = None
    message: str = ""
    seconds: float = 0.0


def _worker_main(conn: Connection, initializer: Callable[[], Any] | None,
                 parent: int | None = None) -> None:  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nasframe import lifeline

    lifeline.die_with_parent(parent)    # killed with the driver (kill -9 included)
    lifeline.tie_children()             # and so are the processes its objectives fork
    try:
        if initializer is not None:
            initializer()
        conn.send(("ready", None))
    except BaseException as err:  # noqa: BLE001 - reported to the driver
        conn.send(("init-error", describe_error(err)))
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, arg = task
        try:
            result = ("ok", fn(arg))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the driver
            result = ("error", describe_error(err))
        try:
            conn.send(result)
        except Exception as err:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("error", f"the result could not be sent back: {type(err).__name__}: {err}"))


def describe_error(err: BaseException) -> str:
    """The exception's own line first (what a table or CSV shows), then its traceback."""
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err))


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, initializer: Callable[[], Any] | None):
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child, initializer, os.getpid()),
                                   daemon=True)
        with _bare_main():
            self.process.start()
        child.close()
        self.ready = False
        #: why the worker could not start (its initializer failed, or it died starting)
        self.broken: str | None = None
        self.task: int | None = None
        self.since = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def describe_exit(code: int | None) -> str:
    """``exit code 3`` or ``killed by signal SIGKILL``."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """``workers`` spawned processes running ``fn(arg)`` tasks (see the module docstring)."""

    def __init__(self, workers: int, initializer: Callable[[], Any] | None = None,
                 context: str = "spawn"):
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.size = workers
        self.initializer = initializer
        self._ctx = mp.get_context(context)
        self._workers: list[_Worker] = []

    def _ensure(self) -> None:
        self._workers = [w for w in self._workers if w.process.is_alive() or w.task is not None]
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self._ctx, self.initializer))

    def _starting(self, ready: list, outcomes: list, todo: list[int]) -> None:
        """Workers that were starting: ready, or broken (failing the next task with why)."""
        for w in [w for w in self._workers if not w.ready]:
            why = None
            if w.conn in ready:
                try:
                    status, payload = w.conn.recv()
                except (EOFError, OSError):
                    w.process.join(timeout=5)
                    why = f"a worker died while starting ({describe_exit(w.process.exitcode)})"
                else:
                    if status == "ready":
                        w.ready = True
                        continue
                    why = f"a worker could not start: {payload}"
            elif w.process.sentinel in ready or not w.process.is_alive():
                w.process.join(timeout=5)
                why = f"a worker died while starting ({describe_exit(w.process.exitcode)})"
            if why is not None:
                if todo:
                    outcomes[todo.pop(0)] = Outcome("error", message=why)
                w.kill()
                self._workers.remove(w)

    def run(self, fn: Callable[[Any], Any], args: Sequence[Any],
            timeout: float | None = None) -> list[Outcome]:
        """Run ``fn(arg)`` for every ``arg``; one :class:`Outcome` each, in order."""
        outcomes: list[Outcome | None] = [None] * len(args)
        todo = list(range(len(args)))
        self._ensure()
        while todo or any(w.task is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.task is None and todo:
                    i = todo.pop(0)
                    w.task, w.since = i, time.monotonic()
                    try:
                        w.conn.send((fn, args[i]))
                    except Exception as err:  # noqa: BLE001 - e.g. the task cannot be pickled
                        outcomes[i] = Outcome("error", message=f"the task could not be sent to a "
                                              f"worker: {type(err).__name__}: {err}")
                        w.task = None
            busy = [w for w in self._workers if w.task is not None]
            starting = [w for w in self._workers if not w.ready]
            watched = busy + starting
            if not watched:
                continue
            ready = wait([w.conn for w in watched] + [w.process.sentinel for w in watched],
                         timeout=POLL)
            self._starting(ready, outcomes, todo)
            now = time.monotonic()
            replace: list[_Worker] = []
            for w in busy:
                i = w.task
                if w.conn in ready:
                    try:
                        status, payload = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(timeout=5)
                        outcomes[i] = Outcome("died", message=describe_exit(w.process.exitcode),
                                              seconds=now - w.since)
                        replace.append(w)
                        continue
                    outcomes[i] = (Outcome("ok", value=payload, seconds=now - w.since)
                                   if status == "ok" else
                                   Outcome("error", message=payload, seconds=now - w.since))
                    w.task = None
                elif w.process.sentinel in ready or not w.process.is_alive():
                    w.process.join(timeout=5)
                    outcomes[i] = Outcome("died", message=describe_exit(w.process.exitcode),
                                          seconds=now - w.since)
                    replace.append(w)
                elif timeout is not None and now - w.since > timeout:
                    outcomes[i] = Outcome("timeout", message=f"timed out after {timeout:g} s",
                                          seconds=now - w.since)
                    replace.append(w)
            for w in replace:
                w.task = None
                w.kill()
                self._workers.remove(w)
            self._ensure()
        return [o for o in outcomes]  # type: ignore[misc]

    def shutdown(self) -> None:
        """Stop every worker now (tasks in flight are abandoned)."""
        for w in self._workers:
            w.kill()
        self._workers = []

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Start a spawned worker without re-running the driver's main script in it.

    ``multiprocessing``'s spawn re-imports the main script in every child, so a
    script (or ``python -`` / a notebook helper) without an ``if __name__ ==
    "__main__":`` guard would start its search again in each worker, and a main
    that is not a file (stdin) kills the worker at start. Workers need nothing
    from ``__main__`` (components defined there are sent by value, see
    :mod:`nasframe.inprocess`), so the child is started against an empty one."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main

