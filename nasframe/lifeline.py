"""Processes of a run die with the run, and never carry its lock.

* The run's lock is an ``flock`` on a file descriptor; a child made by ``fork``
  shares that descriptor, so a child an objective forked (a data loader, a
  ``multiprocessing`` pool with the fork method) would keep the run locked after
  the driver was killed. Every fork closes the lock's descriptors in the child.
* A child forked by the driver or by a worker (and every worker of the process
  executor) gets ``PR_SET_PDEATHSIG`` = SIGKILL on Linux: when the process that
  made it dies (``kill -9`` included), the kernel kills it too, so no trial goes
  on running, or hanging, for a run that is gone.

Children started with ``exec`` (``subprocess``) close the lock's descriptor
(it is not inheritable) but are not tied to the driver's life: an objective
that starts programs should wait for them.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

_lock_fds: set[int] = set()
_tie_children = False
_registered = False

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; False elsewhere).
    ``expected_parent``: exit at once when the parent is already gone (the race between
    fork and this call)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
    return True


def _after_fork_in_child() -> None:
    for fd in list(_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    # a fork from the main thread only: PDEATHSIG fires when the forking *thread* ends
    if _tie_children and threading.current_thread() is threading.main_thread():
        die_with_parent()


def _register() -> None:
    global _registered
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _registered = True


def hold_lock_fd(fd: int) -> None:
    """``fd`` holds a run's lock: no forked child keeps it."""
    _register()
    _lock_fds.add(fd)


def release_lock_fd(fd: int) -> None:
    _lock_fds.discard(fd)


def tie_children(on: bool = True) -> None:
    """Children forked from now on by this process die with it (the driver, workers)."""
    global _tie_children
    _register()
    _tie_children = on
