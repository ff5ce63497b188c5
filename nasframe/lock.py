"""One writer per run: a lock held for the life of ``run`` / ``resume``.

The lock is an exclusive ``flock`` on ``RUN_DIR/.nasframe.lock``; the file
also says who holds it (pid, host, command, since when). The operating system
releases a ``flock`` when its process dies, so a lock left by a dead process
(``kill -9``, a crash) is simply taken over, with a notice naming the
previous holder. A second live process gets a :class:`RunLocked` error
(exit code 2) naming the holder.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from nasframe import lifeline
from nasframe.errors import ConfigError

LOCK_NAME = ".nasframe.lock"


class RunLocked(ConfigError):
    """The run directory is in use by another live process."""


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"({holder.get('command', '?')}, since {when})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw if w]
    return " ".join(words[:4])[:80] or "?"


def open_by(path: Path) -> list[int]:
    """Process ids that have ``path`` open (Linux, from /proc; [] elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    try:
        target = os.stat(path)
    except OSError:
        return []
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    st = os.stat(fd)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    pids.append(int(entry.name))
                    break
        except OSError:
            continue
    return sorted(pids)


class RunLock:
    """``with RunLock(run_dir):`` or :meth:`acquire` / :meth:`release`."""

    def __init__(self, run_dir: str | Path, command: str = ""):
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command or " ".join(Path(a).name if i == 0 else a
                                           for i, a in enumerate(sys.argv[:3]))
        self._fd: int | None = None
        #: the previous holder when its lock was taken over (for a notice), else None
        self.took_over: dict[str, Any] | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who the lock file says holds (or last held) the lock."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder() or {}
            pid = holder.get("pid")
            others = [p for p in open_by(self.path) if p != os.getpid()]
            if isinstance(pid, int) and not _alive(pid) and others:
                # the recorded holder is gone; a process it left behind holds the lock
                who = ", ".join(f"pid {p} ({_cmdline(p)})" for p in others[:3])
                raise RunLocked(
                    f"{self.path.parent} is locked by {who}, left running by {_describe(holder)}, "
                    f"which is no longer running; stop it (kill {others[0]}), then resume") from None
            raise RunLocked(
                f"{self.path.parent} is in use by {_describe(holder)}; wait for that run to "
                f"finish or stop it (kill -TERM {holder.get('pid', 'PID')}), then resume") from None
        previous = self.holder()
        if previous and previous.get("pid") != os.getpid():
            self.took_over = previous
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        lifeline.hold_lock_fd(fd)       # a child forked by an objective never holds the run
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            lifeline.release_lock_fd(self._fd)
            os.close(self._fd)
            self._fd = None

    def notice(self) -> str | None:
        """A line about a lock taken over from a process that is gone, if any."""
        if self.took_over is None:
            return None
        return f"took over the lock left by {_describe(self.took_over)}, which is no longer running"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
