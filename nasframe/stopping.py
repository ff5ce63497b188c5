"""Telling a stop the user asked for from an exception a trial raised.

A run stops when its user presses Ctrl-C (SIGINT) or a scheduler sends SIGTERM.
An objective may also *raise* ``KeyboardInterrupt`` or ``SystemExit`` itself (a
library's own signal handling, a ``sys.exit`` deep in third-party code): that
is the trial's failure, not a request to stop the run, and must not leave the
trial ``interrupted`` to be re-run (and interrupt the run again) on every resume.

While :func:`watch` is active (the runner and ``nasframe evaluate`` use it) the
process's SIGINT and SIGTERM handlers record which signal arrived before they
raise ``KeyboardInterrupt`` / :class:`~nasframe.errors.Terminated`;
:func:`objective_error` then says whether an exception caught around an
objective is the objective's own (fail the trial) or the signal's (stop).
Worker processes, which never receive the user's signals, treat every such
exception as the objective's (:func:`watch` with ``install=False``).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from nasframe.errors import Terminated

_requested: str | None = None
_watching = 0


def requested() -> str | None:
    """``"interrupt"`` or ``"terminate"`` once such a signal arrived inside :func:`watch`."""
    return _requested


def watching() -> bool:
    return _watching > 0


def objective_error(err: BaseException) -> bool:
    """True when ``err`` (a KeyboardInterrupt or SystemExit caught around an objective) is
    the objective's own exception, not the user's Ctrl-C / SIGTERM."""
    if not isinstance(err, (KeyboardInterrupt, SystemExit)):
        return False
    return watching() and _requested is None


@contextlib.contextmanager
def watch(install: bool = True) -> Iterator[None]:
    """Record SIGINT / SIGTERM as they arrive (main thread only), raising
    ``KeyboardInterrupt`` / ``Terminated`` as usual; ``install=False`` only marks the
    process as one whose objectives' interrupts are their own (workers)."""
    global _requested, _watching

    previous: dict[int, object] = {}
    if install and threading.current_thread() is threading.main_thread():
        def on_int(signum, frame):
            global _requested
            _requested = _requested or "interrupt"
            raise KeyboardInterrupt()

        def on_term(signum, frame):
            global _requested
            _requested = _requested or "terminate"
            raise Terminated()

        for sig, handler in ((signal.SIGINT, on_int), (signal.SIGTERM, on_term)):
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:   # e.g. SIGINT of a background job
                    continue
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):    # not settable here
                pass
    if _watching == 0:
        _requested = None
    _watching += 1
    try:
        yield
    finally:
        _watching -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if _watching == 0:
            _requested = None
