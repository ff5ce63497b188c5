"""The Python API: Experiment.from_yaml/from_dict, exp.run -> Run, Run.trials/front/pick/
export/resume, and objectives defined in the calling process (a notebook or script)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import nasframe
from conftest import ROOT
from nasframe.errors import ConfigError


def _config(**over):
    doc = {
        "name": "api",
        "seed": 0,
        "search_space": {"name": "toy"},
        "objectives": [{"name": "toy_cost"}, {"name": "toy_quality"}],
        "strategy": {"name": "ens", "params": {"population": 4}},
        "budget": {"trials": 8},
        "references": False,
    }
    doc.update(over)
    return doc


def test_run_from_a_dict_and_read_it_as_dataframes(tmp_path, plugins):
    exp = nasframe.Experiment.from_dict(_config())
    run = exp.run(out=tmp_path / "run")
    assert isinstance(run, nasframe.Run)

    trials = run.trials()
    assert isinstance(trials, pd.DataFrame) and len(trials) == 8
    assert list(trials["number"]) == list(range(8)) and list(trials.index) == list(range(8))
    for col in ("id", "status", "toy_cost", "toy_quality", "toy_cost.provenance",
                "toy_quality.provenance", "is_pareto", "pick", "arch.width", "arch.depth",
                "arch.activation"):
        assert col in trials.columns, col
    assert (trials["status"] == "complete").all()
    # the values are the objectives' own, computed from the architecture columns
    assert (trials["toy_cost"] == trials["arch.width"] * trials["arch.depth"]).all()
    assert trials["toy_cost.provenance"].str.startswith("proxy:").all()

    front = run.front()
    assert 1 <= len(front) <= 8 and front["is_pareto"].all()
    assert list(front["toy_cost"]) == sorted(front["toy_cost"])     # min objective first
    dominated = trials[~trials["is_pareto"].astype(bool)]
    for _, row in dominated.iterrows():      # every non-front trial is dominated by a member
        assert ((front["toy_cost"] <= row["toy_cost"])
                & (front["toy_quality"] >= row["toy_quality"])).any()

    pick = run.pick()
    assert pick is not None and pick["rule"] and bool(pick["is_pareto"])
    assert trials.loc[pick["number"], "pick"]
    assert run.architecture(int(pick["number"])).id == pick["id"]

    assert run.trials(status="failed").empty
    with pytest.raises(ValueError, match="'done': not a trial status; use one of running, complete, infeasible, pruned, failed"):
        run.trials(status="done")

    paths = run.export()
    assert paths and all(Path(p).exists() for p in paths.values())
    assert {"trials.csv", "pareto.json", "pareto.png"} <= set(paths) and (tmp_path / "run" / "front").is_dir()
    # the same run read back from its directory
    again = nasframe.load_run(tmp_path / "run")
    pd.testing.assert_frame_equal(again.trials(), trials)


def test_from_yaml_validates_like_the_cli(tmp_path, plugins):
    path = tmp_path / "exp.yaml"
    path.write_text("name: y\nsearch_space: {name: toy}\nobjectives: [{name: toy_cots}]\n"
                    "budget: {trials: 2}\n")
    with pytest.raises(ConfigError, match=r"objectives\[0\]\.name: unknown objective 'toy_cots'"):
        nasframe.Experiment.from_yaml(path)
    path.write_text("name: y\nsearch_space: {name: toy}\nobjectives: [{name: toy_cost}]\n"
                    "budget: {trials: 2}\nreferences: false\n")
    run = nasframe.Experiment.from_yaml(path).run(out=tmp_path / "r")
    assert len(run.trials()) == 2
    from nasframe.store import TrialStore

    store = TrialStore.open(tmp_path / "r", read_only=True)
    try:       # the file's text is kept with the run, as `nasframe run` keeps it
        assert store.get_meta("config_text") == path.read_text()
    finally:
        store.close()


def test_a_decorated_function_is_an_objective_with_the_inline_executor(tmp_path, plugins):
    @nasframe.objective(direction="max", kind="proxy", unit="px")
    def api_reach(candidate):
        """Width plus depth, in a notebook."""
        return candidate.arch["width"] + candidate.arch["depth"]

    assert "api_reach" in plugins.objectives
    assert plugins.objectives.entry("api_reach").plugin == "in-process"
    run = nasframe.Experiment.from_dict(_config(objectives=[
        {"name": "toy_cost"}, {"name": "api_reach"}])).run(out=tmp_path / "run")
    t = run.trials()
    assert (t["api_reach"] == t["arch.width"] + t["arch.depth"]).all()
    assert t["api_reach.provenance"].str.startswith("proxy:python").all()

    # running the cell again replaces the definition, as a notebook user expects
    @nasframe.objective(name="api_reach", direction="max")
    def api_reach_v2(candidate, ctx):
        return 2 * candidate.arch["width"]

    run = nasframe.Experiment.from_dict(_config(objectives=[
        {"name": "toy_cost"}, {"name": "api_reach"}])).run(out=tmp_path / "run2")
    t = run.trials()
    assert (t["api_reach"] == 2 * t["arch.width"]).all()


def test_an_in_process_objective_reaches_process_workers(tmp_path, plugins):
    log = tmp_path / "pids.txt"

    @nasframe.objective(direction="min")
    def api_where(candidate):
        with open(log, "a") as f:           # `log` travels with the function (by value)
            f.write(f"{os.getpid()}\n")
        return float(candidate.arch["width"])

    # workers find installed plugins only (the tests' toy plugin is not installed)
    exp = nasframe.Experiment.from_dict(_config(
        search_space={"name": "conv_denoiser", "params": {"input_size": 16}},
        objectives=[{"name": "params"}, {"name": "api_where"}], budget={"trials": 4},
        executor={"name": "process", "workers": 2}))
    run = exp.run(out=tmp_path / "run")
    t = run.trials()
    assert (t["status"] == "complete").all(), t["error"].tolist()
    assert (t["api_where"] == t["arch.width"]).all()
    pids = {int(p) for p in log.read_text().split()}
    assert pids and os.getpid() not in pids          # evaluated in the workers


def test_an_in_process_objective_that_cannot_reach_workers_fails_at_validate(plugins):
    lock = threading.Lock()

    @nasframe.objective
    def api_locked(candidate):
        with lock:
            return 1.0

    doc = _config(objectives=[{"name": "api_locked"}], executor={"name": "process"})
    with pytest.raises(ConfigError) as err:
        nasframe.Experiment.from_dict(doc)
    msg = str(err.value)
    assert "objective 'api_locked' cannot be sent to worker processes" in msg
    assert "executor: {name: inline}" in msg
    # with the inline executor it runs
    nasframe.Experiment.from_dict(_config(objectives=[{"name": "api_locked"}]))


def test_a_name_taken_by_an_installed_plugin_is_refused(plugins):
    with pytest.raises(Exception, match="toy_cost"):
        @nasframe.objective
        def toy_cost(candidate):
            return 0.0
    assert plugins.objectives.entry("toy_cost").plugin == "nasframe-tests"


def test_an_interrupted_run_resumes_from_python(tmp_path, plugins):
    stop = tmp_path / "stop"
    calls = tmp_path / "calls"

    @nasframe.objective
    def api_stoppable(candidate):
        with open(calls, "a") as f:
            f.write(candidate.arch.id + "\n")
        if stop.exists() and len(calls.read_text().split()) == 4:
            os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C in the middle of the 4th trial
            time.sleep(5)                            # (the handler raises here)
        return float(candidate.arch["depth"])

    stop.touch()
    exp = nasframe.Experiment.from_dict(_config(objectives=[{"name": "toy_cost"},
                                                            {"name": "api_stoppable"}]))
    # Ctrl-C as an interactive Python takes it (pytest-xdist's workers ignore SIGINT)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            exp.run(out=tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, before)
    run = nasframe.load_run(tmp_path / "run")
    t = run.trials()
    assert (t["status"] == "complete").sum() == 3
    stopped = t[t["status"] != "complete"]
    assert (stopped["status"] == "running").all() and (stopped["failure"] == "interrupted").all()
    stop.unlink()
    run = run.resume()
    t = run.trials()
    assert len(t) == 8 and (t["status"] == "complete").all()
    assert t["id"].is_unique


def _api_script(index: int = 0) -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) > index, "docs/api.md lacks a python block"
    return blocks[index]


def test_the_optuna_style_loop_in_docs_api_md_runs(tmp_path):
    """ask/tell, enqueue, evaluate, optimize with n_trials/timeout/callbacks, best_trials,
    as written in docs/api.md; run twice: the second run continues the first
    (load_if_exists) and never re-evaluates an architecture."""
    script = tmp_path / "loop.py"
    script.write_text(_api_script(1))
    env = {**os.environ, "PYTHONPATH": ""}
    outs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        outs.append(res.stdout)
    first = outs[0]
    assert "asked 0 enqueued" in first and "told: complete proxy:told@n/a" in first
    assert "evaluated: {'params'" in first
    assert "trial 7: " in first and "trial 8: " not in first      # stopped by the callback
    assert "best: [" in first
    second = outs[1]
    assert "asked 8 asked" in second          # the enqueued architecture was evaluated already
    run = nasframe.load_run(tmp_path / "runs" / "loop")
    frame = run.trials()
    assert frame["id"].is_unique
    assert str(frame["started"].dtype).startswith("datetime64")
    assert set(frame["status"]) <= {"complete", "infeasible"}


@pytest.mark.slow
def test_the_notebook_script_in_docs_api_md_runs(tmp_path):
    """The script a new user copies from docs/api.md, run as they would run it."""
    script = tmp_path / "notebook.py"
    script.write_text(_api_script())
    env = {**os.environ, "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "rows: 12" in out and "front:" in out and "pick:" in out, out
    assert (tmp_path / "runs" / "notebook" / "trials.db").exists()
    assert (tmp_path / "runs" / "notebook" / "pareto.json").exists()
