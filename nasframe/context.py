"""The run context handed to spaces and objectives: paths, seed, cache, progress."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from nasframe import checkpoint

if TYPE_CHECKING:
    from nasframe.accel import Accelerator


def content_hash(payload: Any) -> str:
    """SHA-256 (16 hex digits) of a JSON-serialisable payload, keys sorted."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ArtifactCache:
    """Files keyed by a hash of what produced them.

    ``path(namespace, payload, suffix)`` is where the artifact of ``payload``
    lives; ``get_or_create`` calls ``make(path)`` only when that file does not
    exist yet, writing atomically (to a temporary name, then renamed), so an
    interrupted job never leaves a half-written artifact behind. The training
    loops ``make`` runs checkpoint themselves in ``<hash>.partial/`` and resume
    from there after a stop (:mod:`nasframe.checkpoint`).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, namespace: str, payload: Any, suffix: str = "") -> Path:
        return self.root / namespace / f"{content_hash(payload)}{suffix}"

    def get_or_create(self, namespace: str, payload: Any, make: Callable[[Path], None],
                      suffix: str = "") -> Path:
        path = self.path(namespace, payload, suffix)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        partial = path.with_name(path.name + ".partial")
        with checkpoint.scope(partial):      # training loops in `make` resume after a stop
            make(tmp)
        os.replace(tmp, path)
        checkpoint.clear(partial)
        meta = path.with_name(path.name + ".json")
        meta.write_text(json.dumps(payload, sort_keys=True, indent=1, default=str))
        return path


@dataclass
class Context:
    """Shared by :meth:`SearchSpace.prepare` and :meth:`Objective.evaluate`.

    ``seed`` is the experiment's seed. Every seeded part of a component (a
    teacher's training, distillation, synthetic data, fixed inputs) uses it
    unless the component's own ``seed`` param is set, so changing the
    experiment's seed changes all of them. ``op_handles`` are the MAC-count
    handles plugins registered for their custom ops (``register_op_handles``).
    """

    run_dir: Path
    seed: int = 0
    device: str = "cpu"
    #: autocast precision of training and evaluation: fp32, bf16 or fp16
    precision: str = "fp32"
    #: an :class:`~nasframe.accel.Accelerator` to use instead of the one ``device`` and
    #: ``precision`` make (e.g. :class:`~nasframe.placement_check.EmulatedDevice` in tests)
    accelerator: Accelerator | None = None
    cache_dir: Path | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    quiet: bool = False
    op_handles: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accel(self) -> Accelerator:
        """``device`` and ``precision`` as an :class:`~nasframe.accel.Accelerator`: what
        every training and evaluation loop places its modules and batches with."""
        if self.accelerator is not None:
            return self.accelerator
        if self._accel is None or self._accel[0] != (self.device, self.precision):
            from nasframe.accel import Accelerator

            self._accel = ((self.device, self.precision), Accelerator(self.device, self.precision))
        return self._accel[1]

    def seed_for(self, own: int | None) -> int:
        """A component's seed: its own when set, else the experiment's."""
        return self.seed if own is None else own

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self._accel: tuple[tuple[str, str], Accelerator] | None = None
        self.cache = ArtifactCache(Path(self.cache_dir) if self.cache_dir else self.run_dir / "cache")

    def progress(self, transient: bool = True):
        """A rich progress bar for a long step (teacher training, distillation)."""
        from nasframe.progress import step_progress

        return step_progress(self.console, disable=self.quiet, transient=transient)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)
