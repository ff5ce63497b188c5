"""The third-party plugin in ``examples/plugin-example``, installed and used like a real one.

The package is installed once per module into a temporary ``site`` folder
(``pip install --target``; the global environment is left alone) and the real
CLI runs in subprocesses with ``PYTHONPATH`` pointing there, so nasframe finds
the plugin through the entry point in that folder's ``*.dist-info``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "plugin-example"
EXPERIMENT = EXAMPLE / "experiment.yaml"
N_INITIAL = 4  # strategy.params.n_initial in experiment.yaml


@dataclass(frozen=True)
class Installed:
    root: Path  # the temporary folder
    src: Path   # a copy of the example (pip builds in the source tree: keep the repository clean)
    site: Path  # where the package is installed

    def env(self, **extra: str) -> dict[str, str]:
        """The full environment of a subprocess that sees the installed plugin
        (and every other plugin, unless ``extra`` sets the NASFRAME_* variables)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("NASFRAME_PLUGINS", "NASFRAME_DISABLE_PLUGINS")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH")) if p)
        env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread beats several fighting over busy cores
        env["COLUMNS"] = "200"
        return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("plugin_example")
    src, site = root / "src", root / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return Installed(root, src, site)


def _cli(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The real CLI, in a subprocess started in the repository root."""
    return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=ROOT,
                          env=installed.env(**env), capture_output=True, text=True, timeout=300)


def _rows(text: str) -> list[list[str]]:
    """The cells of each line of ``nasframe plugins`` (tab-separated when piped, or a table)."""
    return [cells for line in text.splitlines()
            if len(cells := [c.strip() for c in re.split(r"\t|│", line) if c.strip()]) >= 4]


@pytest.mark.slow
def test_the_installed_plugin_registers_all_three_components(installed):
    assert (installed.site / "nasframe_example" / "__init__.py").is_file()
    (dist,) = installed.site.glob("nasframe_example_plugin-0.1.0.dist-info")
    assert "example = nasframe_example" in (dist / "entry_points.txt").read_text()

    res = _cli(installed, "plugins")
    assert res.returncode == 0, res.stderr
    assert "failed to load" not in res.stderr
    rows = {(r[0], r[1]): r for r in _rows(res.stdout)}
    for kind, name in (("search space", "tiny_mlp"), ("objective", "fit_loss"),
                       ("strategy", "local_search")):
        assert (kind, name) in rows, res.stdout
        assert rows[kind, name][2:4] == ["example", "0.1.0"], rows[kind, name]
    assert rows["objective", "params"][2] == "builtin_objectives"  # the built-ins still load


@pytest.mark.slow
def test_run_the_example_experiment(installed, tmp_path):
    run_dir = tmp_path / "run"
    res = _cli(installed, "run", str(EXPERIMENT), "--out", str(run_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "12 trials + 1 reference architecture, 0 failed" in res.stderr

    with (run_dir / "trials.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    search = [r for r in rows if r["origin"] == "strategy"]
    refs = [r for r in rows if r["origin"].startswith("reference:")]
    assert len(search) == 12 and [r["origin"] for r in refs] == ["reference:baseline"]
    assert all(r["status"] == "complete" for r in rows)
    assert len({r["id"] for r in rows}) == len(rows), "an architecture was evaluated twice"
    for r in rows:
        assert float(r["fit_loss"]) > 0 and float(r["params"]) > 0
        assert r["fit_loss.provenance"] == "proxy:torch@cpu"
        assert r["params.provenance"].startswith("proxy:")

    # local search: after N_INITIAL random starts, the next proposal is one decision
    # away from the best trial so far (the baseline reference counts too)
    decisions = ("arch.width", "arch.depth", "arch.activation")
    first_search = rows.index(search[0])
    before = rows[: first_search + N_INITIAL]
    best = min(before, key=lambda r: float(r["fit_loss"]))
    mutant = search[N_INITIAL]
    assert sum(mutant[d] != best[d] for d in decisions) == 1, (best, mutant)

    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert [o["key"] for o in pareto["objectives"]] == ["fit_loss", "params"]
    assert pareto["front"], "empty Pareto front"
    assert pareto["trials"] == len(rows) == 13
    on_front = {r["id"] for r in rows if r["is_pareto"] == "1"}
    assert {m["id"] for m in pareto["front"]} == on_front
    assert pareto["references"][0]["name"] == "baseline"


@pytest.mark.slow
def test_validate_fails_when_the_plugin_is_disabled(installed):
    ok = _cli(installed, "validate", str(EXPERIMENT))
    assert ok.returncode == 0, ok.stderr
    assert "search space 'tiny_mlp'" in ok.stdout and "strategy 'local_search'" in ok.stdout

    for env in ({"NASFRAME_DISABLE_PLUGINS": "example"},
                {"NASFRAME_PLUGINS": "builtin_search_spaces,builtin_objectives,builtin_plugins"}):
        res = _cli(installed, "validate", str(EXPERIMENT), **env)
        assert res.returncode == 2, (env, res.stdout, res.stderr)
        assert "unknown search space 'tiny_mlp'" in res.stderr
        assert "unknown objective 'fit_loss'" in res.stderr
        assert "unknown strategy 'local_search'" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_the_example_packages_own_conformance_tests_pass(installed):
    # run from the temporary root, so `nasframe_example` is imported from `site`, not `src`
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(installed.src / "tests")],
        cwd=installed.root, env=installed.env(),
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 30 and "failed" not in summary and "error" not in summary, summary
