"""Shared fixtures: a tiny plugin of test components registered like any plugin."""
from __future__ import annotations

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    # the fast suite runs on every core (pytest-xdist, -n auto): each worker, and the
    # processes its tests start, takes its share of the cores (before torch loads OpenMP)
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_share)

import sys
import time
from pathlib import Path

import pytest

from nasframe import Field, Objective, Params, Value, hookimpl
from nasframe.params import Float, Int
from nasframe.plugins import get_plugins
from nasframe.testing import ToySpace

ROOT = Path(__file__).resolve().parents[1]


class ToyA(Objective):
    """Width x depth: a deterministic cost (min)."""

    name = "toy_cost"
    direction = "min"
    cost = 0.1

    def evaluate(self, candidate, ctx):
        return float(candidate.arch["width"] * candidate.arch["depth"])


class ToyB(Objective):
    """A quality that grows with width and depth, with a small kink (max)."""

    name = "toy_quality"
    direction = "max"

    class Params(Params):
        fail_width: Int | None = None
        """Raise for architectures of this width."""
        sleep: Float = Field(0.0, ge=0)
        """Seconds to sleep per evaluation."""

    def evaluate(self, candidate, ctx):
        if self.params.sleep:
            time.sleep(self.params.sleep)
        a = candidate.arch
        if self.params.fail_width is not None and a["width"] == self.params.fail_width:
            raise RuntimeError(f"width {a['width']} is broken on purpose")
        return Value(10 * (1 - 1 / (1 + a["width"] * a["depth"])) + (0.5 if a["activation"] else 0.0),
                     {"note": "synthetic"})


class _TestPlugin:
    @hookimpl
    def register_search_spaces(self, registry):
        registry.add(ToySpace)

    @hookimpl
    def register_objectives(self, registry):
        registry.add(ToyA)
        registry.add(ToyB)


def _ensure_registered():
    plugins = get_plugins()
    if "toy" not in plugins.search_spaces:
        plugins.register(_TestPlugin(), "nasframe-tests", "0")
    return plugins


@pytest.fixture
def plugins():
    return _ensure_registered()


@pytest.fixture
def toy_config():
    """A dict experiment over the toy space (edit freely in a test)."""
    return {
        "name": "toy",
        "seed": 0,
        "search_space": {"name": "toy"},
        "objectives": [{"name": "toy_cost"}, {"name": "toy_quality"}],
        "strategy": {"name": "random"},
        "budget": {"trials": 8},
    }


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real CLI in a subprocess; returns CompletedProcess."""
    import os
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
