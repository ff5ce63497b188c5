"""A run as an Optuna study (``nasframe export --optuna``) and in optuna-dashboard, seen in
a real headless chromium (``nasframe dashboard``)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from nasframe.config import config_from_dict
from nasframe.results import load_run
from nasframe.runner import run_experiment

optuna = pytest.importorskip("optuna")
if int(optuna.__version__.split(".")[0]) < 5:
    pytest.skip("needs optuna >= 5", allow_module_level=True)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished toy run: 12 trials, one width failing, a constraint some break."""
    from conftest import _ensure_registered

    _ensure_registered()
    cfg = {"name": "toy-study", "seed": 0, "search_space": {"name": "toy"},
           "objectives": [{"name": "toy_cost"},
                          {"name": "toy_quality", "params": {"fail_width": 8}}],
           "constraints": ["toy_cost <= 6"], "skip_infeasible": False,
           "strategy": {"name": "random"}, "budget": {"trials": 12}}
    run_dir = tmp_path_factory.mktemp("runs") / "toy"
    run_experiment(config_from_dict(cfg), run_dir)
    return run_dir


def test_export_writes_values_directions_constraints_params_and_provenance(toy_run, tmp_path):
    from nasframe.optuna_study import write_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(toy_run, url)
    study = optuna.load_study(study_name="toy-study", storage=url)
    run = load_run(toy_run)
    trials = run.trial_list()
    assert len(study.trials) == len(trials) >= 12
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["toy_cost", "toy_quality"]
    assert study.user_attrs["constraints"] == ["toy_cost <= 6"]
    assert study.user_attrs["strategy"] == "random"
    states = {"complete": "COMPLETE", "failed": "FAIL"}
    failed = 0
    for ot, t in zip(study.trials, trials):
        assert ot.user_attrs["nasframe_number"] == t.number
        assert ot.user_attrs["arch_id"] == t.arch.id
        assert ot.user_attrs["origin"] == t.origin
        assert ot.state.name == states[t.status]
        # the space's distributions: width categorical, depth an integer range
        assert ot.params == t.arch.to_dict()
        assert type(ot.distributions["depth"]).__name__ == "IntDistribution"
        if t.status == "failed":
            failed += 1
            assert "broken on purpose" in ot.user_attrs["error"]
            continue
        assert ot.values == [t.values["toy_cost"], t.values["toy_quality"]]
        assert ot.user_attrs["provenance.toy_cost"] == t.provenance["toy_cost"].short()
        assert ot.constraints == {"0": t.values["toy_cost"] - 6}
        assert ot.user_attrs["feasible"] == (t.values["toy_cost"] <= 6)
        assert ot.datetime_start is not None and ot.datetime_complete >= ot.datetime_start
    assert failed >= 1
    # a study of that name is there now: an error naming the fix, unless --overwrite
    from nasframe.errors import ConfigError

    with pytest.raises(ConfigError, match="--overwrite"):
        write_study(toy_run, url)
    assert len(write_study(toy_run, url, overwrite=True).trials) == len(trials)


def test_export_cli_writes_a_study_without_the_runs_plugins(toy_run, tmp_path):
    """The subprocess lacks the test plugin (space `toy`): the values seen are the params."""
    db = tmp_path / "sub" / "s.db"
    r = run_cli("export", str(toy_run), "--optuna", f"sqlite:///{db}", "--study-name", "x")
    assert r.returncode == 0, r.stderr
    assert "optuna study 'x'" in r.stdout
    study = optuna.load_study(study_name="x", storage=f"sqlite:///{db}")
    assert study.trials[0].params == load_run(toy_run).trial_list()[0].arch.to_dict()
    r = run_cli("export", str(toy_run), "--optuna", f"sqlite:///{db}", "--study-name", "x")
    assert r.returncode == 2 and "--overwrite" in r.stdout + r.stderr


# ------------------------------------------------------------------ the dashboard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _page_text(url: str) -> str:
    """The page's text once its scripts ran, from a real headless chromium."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={profile}",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", r.stdout, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _js(v: float) -> str:
    """A float as the page prints it (a JS number)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no {CHROMIUM} (apt-get install chromium)")
def test_dashboard_shows_the_runs_trials_in_a_real_browser(toy_run):
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nasframe", "dashboard", str(toy_run),
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180      # importing optuna_dashboard can take 40 s here
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(1)
        studies = _get(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["toy-study"]
        sid = studies[0]["study_id"]
        trials = load_run(toy_run).trial_list()
        done = [(i, t) for i, t in enumerate(trials) if t.status == "complete"][:8]
        numbers = ",".join(str(i) for i, _ in done)
        text = _page_text(f"{base}/dashboard/studies/{sid}/trials?numbers={numbers}")
        assert f"{len(trials)} Trials" in text, text[:2000]
        panes = re.split(r"Trial (\d+) \(trial_id=\d+\)", text)
        shown = {int(panes[k]): panes[k + 1] for k in range(1, len(panes) - 1, 2)}
        for i, t in done:
            pane = shown[i]
            assert f"Value {_js(t.values['toy_cost'])}, {_js(t.values['toy_quality'])}" in pane
            assert t.arch.id in pane                      # the user attrs are shown
        # negative control: a value the run does not have is not found
        assert f"Value {_js(done[0][1].values['toy_cost'] + 1000)}," not in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
