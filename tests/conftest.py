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


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test leaves torch's thread count as it found it: a benchmark's ``main`` or a
    fixture that sets 2 threads would otherwise leave this xdist worker on 2 threads
    beside the other worker's, and OpenMP's spinning threads then slow every later test
    of the worker by up to ten times (seen: a 1 s conformance test taking 12 s of CPU)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        if before is None:
            before = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


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


def load_script(name: str):
    """``benchmarks/<name>.py`` as the module ``nasframe_bench_<name>`` (the benchmarks are
    scripts, not a package), registered in ``sys.modules`` as an import would (so that its
    pickled functions are found by name in forked workers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nasframe_bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cli_here(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """The CLI in this process: what it prints and its exit code, as :func:`run_cli` returns
    them, without a new interpreter's 2-4 s start (torch and the plugins imported again).
    For tests of what the CLI says and does; a process boundary under test (signals, pipes,
    a fresh interpreter's imports) uses :func:`run_cli`. ``timeout`` is not enforced here."""
    import io
    import subprocess
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    from nasframe.cli import main

    saved_env, saved_cwd, shown = dict(os.environ), os.getcwd(), warnings.showwarning
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        os.chdir(cwd or ROOT)
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            try:
                code = main(list(args))
            except SystemExit as exc:                 # argparse's own errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        warnings.showwarning = shown
    return subprocess.CompletedProcess([sys.executable, "-m", "nasframe", *args], code,
                                       stdout.getvalue(), stderr.getvalue())


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real CLI in a subprocess; returns CompletedProcess."""
    import os
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
