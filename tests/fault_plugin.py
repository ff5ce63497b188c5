"""A plugin whose objective misbehaves on purpose, for the fault-injection suite.

Loaded by name (``NASFRAME_PLUGIN_MODULES=fault_plugin`` with this folder on
``PYTHONPATH``), so worker processes load it too. Components:

* space ``fault_space``: one integer decision ``x`` in ``0 .. size-1``;
* objective ``faulty``: a deterministic value of ``x``; for the architectures
  it *hits* (a seeded ``fraction`` of them, or those whose ``x`` is listed in
  ``xs``) it ``crash``-es the process (``os._exit(exit_code)``), ``hang``-s,
  ``raise``-s, returns ``inf`` or ``nan``, raises ``KeyboardInterrupt``
  (``interrupt``) or ``SystemExit(0)`` (``exit``) itself, or ``fork``-s a child
  that sleeps 10 minutes (its pid as ``child-PID`` in ``pid_dir``); every evaluation first sleeps
  ``seconds`` and writes its process id into ``pid_dir``;
* objective ``fault_cost``: ``x mod 97``, always well behaved.

``FAULT_BROKEN=1`` in the environment makes ``faulty`` raise for every hit
architecture whatever its ``mode`` (a "bug" that can be fixed by unsetting it).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Literal

import torch

import nasframe
from nasframe import Field, Integer, Objective, SearchSpace, hookimpl

__version__ = "0"


class FaultSpace(SearchSpace):
    name = "fault_space"
    input_shape = (1,)

    class Params(nasframe.Params):
        size: int = Field(1000, ge=1, le=10**6, strict=True)

    def decisions(self):
        return [Integer("x", 0, self.params.size - 1)]

    def build(self, arch):
        return torch.nn.Identity()


def hit(x: int, fraction: float) -> bool:
    """Whether ``x`` is one of the ``fraction`` of architectures that misbehave (seeded)."""
    h = int(hashlib.sha256(str(x).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


class Faulty(Objective):
    name = "faulty"
    direction = "min"
    cost = 1.0

    class Params(nasframe.Params):
        mode: Literal["ok", "crash", "hang", "raise", "inf", "nan", "interrupt", "exit",
                      "fork"] = "ok"
        fraction: float = Field(1.0, ge=0, le=1)
        xs: list[int] | None = None
        exit_code: int = Field(3, ge=0, le=255, strict=True)
        seconds: float = Field(0.0, ge=0)
        pid_dir: str | None = None

    def evaluate(self, candidate, ctx):
        p = self.params
        x = candidate.arch["x"]
        if p.pid_dir:
            Path(p.pid_dir).mkdir(parents=True, exist_ok=True)
            (Path(p.pid_dir) / str(os.getpid())).touch()
        if p.seconds:
            time.sleep(p.seconds)
        hits = (x in p.xs) if p.xs is not None else hit(x, p.fraction)
        if hits and os.environ.get("FAULT_BROKEN") == "1":
            raise RuntimeError(f"x={x}: the bug FAULT_BROKEN=1 is still there")
        if hits and p.mode == "crash":
            os._exit(p.exit_code)
        if hits and p.mode == "hang":
            while True:
                time.sleep(0.05)
        if hits and p.mode == "raise":
            raise RuntimeError(f"x={x} is broken on purpose")
        if hits and p.mode == "inf":
            return math.inf
        if hits and p.mode == "nan":
            return math.nan
        if hits and p.mode == "interrupt":      # a library's own signal handling does this
            raise KeyboardInterrupt()
        if hits and p.mode == "exit":           # sys.exit(0) deep in third-party code
            raise SystemExit(0)
        if hits and p.mode == "fork":           # a forked helper that outlives the trial
            child = os.fork()
            if child == 0:
                if p.pid_dir:
                    (Path(p.pid_dir) / f"child-{os.getpid()}").touch()
                time.sleep(600)
                os._exit(0)
        return float((x * 7919) % 1009)


class FaultCost(Objective):
    name = "fault_cost"
    direction = "min"
    cost = 0.1

    def evaluate(self, candidate, ctx):
        return float(candidate.arch["x"] % 97)


@hookimpl
def register_search_spaces(registry):
    registry.add(FaultSpace)


@hookimpl
def register_objectives(registry):
    registry.add(Faulty)
    registry.add(FaultCost)
