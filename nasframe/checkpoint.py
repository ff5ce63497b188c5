"""Training that survives a stop: the loops inside a cached artifact save their state.

A space's preparation trains things (a teacher, distilled blocks, an SR model, a
shared base) inside :meth:`ArtifactCache.get_or_create`. Stopped midway (Ctrl-C,
SIGTERM, ``kill -9``), the artifact is not written, and the next run would train
from zero. So every ``make`` of the cache runs in a checkpoint *scope*: a folder
next to the artifact (``<hash>.partial/``), removed once the artifact is written.
Each training loop the ``make`` runs asks :func:`loop` for its checkpoint (the
first loop gets ``loop-0.pt``, the second ``loop-1.pt``, ...) and:

* on start, :meth:`LoopCheckpoint.restore` puts back the tensors, the optimiser,
  the scheduler, the random generators (torch's global one and the loop's own)
  and returns the step to continue from (``steps`` when that loop had finished:
  a ``make`` that runs two loops redoes the first in no time);
* every :data:`EVERY_SECONDS` seconds (and at the end) :meth:`LoopCheckpoint.save`
  writes them, atomically.

Resumed, a loop continues from the last checkpoint with exactly the state it had
there, so the artifact is the one an uninterrupted run makes (same seed, same
thread count). ``NASFRAME_CHECKPOINT_SECONDS`` sets the interval (0: every step).
Checkpoints hold tensors and numbers only and load with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: seconds between two checkpoints of a training loop (env NASFRAME_CHECKPOINT_SECONDS)
EVERY_SECONDS = 30.0

_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("nasframe_checkpoint",
                                                                      default=None)


class _Scope:
    def __init__(self, folder: Path):
        self.folder = folder
        self.loops = 0


@contextlib.contextmanager
def scope(folder: str | Path) -> Iterator[Path]:
    """Training loops run inside get checkpoints in ``folder`` (kept if the block fails or
    is interrupted, so that the next attempt resumes; the caller removes it on success)."""
    folder = Path(folder)
    token = _scope.set(_Scope(folder))
    try:
        yield folder
    finally:
        _scope.reset(token)


def clear(folder: str | Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def every_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("NASFRAME_CHECKPOINT_SECONDS", EVERY_SECONDS)))
    except ValueError:
        return EVERY_SECONDS


def loop() -> LoopCheckpoint | None:
    """The checkpoint of the next training loop of the current scope (None outside one)."""
    s = _scope.get()
    if s is None:
        return None
    path = s.folder / f"loop-{s.loops}.pt"
    s.loops += 1
    return LoopCheckpoint(path)


class LoopCheckpoint:
    """One training loop's saved state (see the module docstring)."""

    def __init__(self, path: Path, every: float | None = None):
        self.path = Path(path)
        self.every = every_seconds() if every is None else every
        self._last = time.monotonic()
        self.restored_from = 0

    def restore(self, tensors: Sequence[Any], optimizer: Any = None, scheduler: Any = None,
                generators: Iterable[Any] = ()) -> tuple[int, dict[str, Any]]:
        """Load the last checkpoint into ``tensors`` (in order), ``optimizer``,
        ``scheduler`` and ``generators``: ``(step to continue from, extra)``; ``(0, {})``
        when there is none."""
        import torch

        if not self.path.is_file():
            return 0, {}
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = state["tensors"]
        if len(saved) != len(tensors) or any(a.shape != b.shape for a, b in zip(saved, tensors)):
            return 0, {}                    # not this loop's: train from the start
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v.to(t.device))
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        for g, g_state in zip(generators, state.get("generators", [])):
            g.set_state(g_state)
        self.restored_from = int(state["step"])
        return self.restored_from, dict(state.get("extra", {}))

    def due(self, force: bool = False) -> bool:
        return force or time.monotonic() - self._last >= self.every

    def save(self, step: int, tensors: Sequence[Any], optimizer: Any = None, scheduler: Any = None,
             generators: Iterable[Any] = (), extra: dict[str, Any] | None = None) -> None:
        """Write the loop's state after ``step`` steps (atomically)."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": int(step), "tensors": [t.detach().cpu().clone() for t in tensors],
                 "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "torch_rng": torch.get_rng_state(),
                 "generators": [g.get_state() for g in generators], "extra": extra or {}}
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()
