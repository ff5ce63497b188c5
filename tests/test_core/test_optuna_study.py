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
import urllib.error
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
    # the front and the pick, marked by id: per trial (user attrs) and in the study's attrs
    front = set(run.front()["number"])
    assert front and [ot.user_attrs["front"] for ot in study.trials] == [
        t.number in front for t in trials]
    assert not any(ot.user_attrs["pick"] for ot in study.trials)
    assert study.user_attrs["front"] == [f"trial {i} ({t.arch.id})" for i, t in enumerate(trials)
                                         if t.number in front]
    assert study.user_attrs["pick"].startswith("none (")     # `random` has no pick rule
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


def test_an_exported_study_makes_optuna_visualization_figures(toy_run, tmp_path):
    """plotly is in the extra: optuna.visualization draws the exported run, constraints
    included (the infeasible trials apart from the front)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = run_cli("export", str(toy_run), "--optuna", url)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="toy-study", storage=url)
    fig = optuna.visualization.plot_pareto_front(study)
    traces = [set(zip(tr.x, tr.y)) for tr in fig.data]
    trials = [t for t in load_run(toy_run).trial_list() if t.status == "complete"]
    point = {t.number: (t.values["toy_cost"], t.values["toy_quality"]) for t in trials}
    assert set().union(*traces) == set(point.values())
    front = set(load_run(toy_run).front()["number"])
    assert {point[n] for n in front} in traces                      # the front, drawn apart
    assert {p for n, p in point.items() if p[0] > 6} in traces     # the infeasible ones too
    assert optuna.visualization.plot_optimization_history(
        study, target=lambda t: t.values[0], target_name="toy_cost").data


# ------------------------------------------------------------------ the dashboard
def _digest(run_dir: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}


def _count(run_dir: Path) -> int:
    """The trials of a run that may still be starting (0 until its store is there)."""
    from nasframe.errors import ConfigError

    try:
        return len(load_run(run_dir).trial_list())
    except ConfigError:
        return 0


def test_the_live_storage_follows_a_running_run_and_never_writes(tmp_path):
    """The dashboard's storage reads the run as it grows: more trials, a running trial
    later complete, the front and the pick as the run's (trial attrs and the study's
    note); writes are refused, and the run's files are never touched."""
    import threading

    from conftest import _ensure_registered

    from nasframe.optuna_study import live_storage, write_study

    _ensure_registered()
    cfg = {"name": "live", "seed": 0, "search_space": {"name": "toy"},
           "objectives": [{"name": "toy_cost"},
                          {"name": "toy_quality", "params": {"sleep": 0.25}}],
           "strategy": {"name": "ens", "params": {"population": 4}}, "budget": {"trials": 16}}
    run_dir = tmp_path / "live"
    runner = threading.Thread(target=run_experiment, args=(config_from_dict(cfg), run_dir))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while _count(run_dir) < 1:
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)
        notes: list[str] = []
        storage = live_storage(run_dir, refresh=0, note=lambda study, text: notes.append(text))
        seen, running = [], {}
        while runner.is_alive():
            trials = storage.get_all_trials(0, deepcopy=False)
            seen.append(len(trials))
            for t in trials:
                running.setdefault(t.number, t.state.name == "RUNNING")
            time.sleep(0.1)
    finally:
        runner.join()
    assert seen[0] < 16 and len(set(seen)) >= 3          # trials appeared while it ran
    trials = storage.get_all_trials(0)
    assert len(trials) == 16
    was_running = [n for n, r in running.items() if r]
    assert was_running and all(trials[n].state.name == "COMPLETE" for n in was_running)
    # the last read is the finished run: as `export --optuna` writes it
    exported = write_study(run_dir, optuna.storages.InMemoryStorage())
    assert [(t.values, t.params, t.user_attrs) for t in trials] == [
        (t.values, t.params, t.user_attrs) for t in exported.trials]
    run = load_run(run_dir)
    front, pick = set(run.front()["number"]), run.pick()
    assert {t.number for t in trials if t.user_attrs["front"]} == front
    assert [t.number for t in trials if t.user_attrs["pick"]] == [pick["number"]]
    assert storage.get_study_user_attrs(0)["pick"].startswith(
        f"trial {pick['number']} ({pick['id']}): {pick['rule']}")
    assert f"**Pick**: trial {pick['number']}, arch `{pick['id']}` ({pick['rule']})" in notes[-1]
    assert ": 16 trials, read" in notes[-1] and len(notes) >= len(set(seen)) >= 3
    for n in front:
        assert f"trial {n} `{trials[n].user_attrs['arch_id']}`" in notes[-1].split("**Front**")[1]
    # read-only: writes are refused, and reading changes no file of the run
    with pytest.raises(PermissionError, match="read-only"):
        storage.set_study_user_attr(0, "x", 1)
    with pytest.raises(PermissionError, match="read-only"):
        storage.set_trial_state_values(trials[0]._trial_id, optuna.trial.TrialState.FAIL)
    before = _digest(run_dir)
    for _ in range(3):
        again = live_storage(run_dir, refresh=0)
        assert len(again.get_all_trials(0)) == 16
    assert _digest(run_dir) == before


def test_the_dashboard_server_logs_requests_only_when_verbose(capfd):
    from nasframe.optuna_study import _server

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    for verbose in (False, True):
        server = _server("127.0.0.1", 0, verbose)
        server.set_app(app)
        import threading

        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            port = server.server_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/some/page", timeout=10) as r:
                assert r.read() == b"ok"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
        err = capfd.readouterr().err
        assert ("GET /some/page" in err) == verbose, err


def test_a_port_in_use_is_exit_2_before_any_url(toy_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("dashboard", str(toy_run), "--port", str(port))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Address already in use" in r.stderr and f"--port {port}" in r.stderr
    assert "--port 0" in r.stderr and "Traceback" not in r.stderr
    assert "http://" not in r.stdout + r.stderr
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


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"no {CHROMIUM} (apt-get install chromium)")


@pytest.mark.slow
@needs_chromium
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


LIVE_EXPERIMENT = """\
name: live
seed: 0
search_space: {name: fault_space, params: {size: 500}}
objectives:
  - {name: faulty, direction: max, params: {mode: ok, seconds: 0.5}}
  - {name: fault_cost}
constraints: ["fault_cost <= 80"]
strategy: {name: ens, params: {population: 6}}
budget: {trials: 100000}
"""


def _lines(proc: subprocess.Popen) -> "queue.Queue[str]":
    """The process's output lines, as they come (a reader thread)."""
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _shown_trials(text: str) -> int:
    found = re.search(r"(\d+) Trials", text)
    assert found, text[:2000]
    return int(found.group(1))


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_shows_trials_appear_while_a_run_goes(tmp_path):
    """A live `nasframe run` (trials of 0.5 s) and `nasframe dashboard --port 0` beside it:
    the page shows N trials, later more; once the run stops, the note names the run's
    pick and front by id. The dashboard prints its two lines and no request log."""
    pytest.importorskip("optuna_dashboard")
    import queue

    exp = tmp_path / "live.yaml"
    exp.write_text(LIVE_EXPERIMENT)
    run_dir = tmp_path / "run"
    tests = str(ROOT / "tests")
    env = dict(os.environ, NASFRAME_PLUGIN_MODULES="fault_plugin", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "run.log"
    run = subprocess.Popen([sys.executable, "-m", "nasframe", "run", str(exp), "--out",
                            str(run_dir), "--quiet"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=log.open("w"))
    dash = None
    try:
        deadline = time.monotonic() + 240

        while _count(run_dir) < 2:
            assert run.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run made no trials"
            time.sleep(0.5)
        dash = subprocess.Popen([sys.executable, "-m", "nasframe", "dashboard", str(run_dir),
                                 "--port", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines, said = _lines(dash), []
        while not (said and said[-1].startswith("dashboard: ")):
            try:
                said.append(lines.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"the dashboard did not start: {said}")
        assert len(said) == 2 and "(live:" in said[0], said
        url = re.match(r"dashboard: (http://127\.0\.0\.1:\d+/dashboard/studies/\d+) ", said[1])
        assert url, said
        page = url.group(1)
        first = _shown_trials(_page_text(f"{page}/trials"))
        read_at = time.monotonic()
        assert first >= 2 and run.poll() is None
        while _count(run_dir) < first + 3:              # the run goes on
            assert run.poll() is None, log.read_text()
            time.sleep(0.5)
        # the dashboard reads the run at most every 2 s (--refresh) and optuna-dashboard
        # keeps its trial list 2 s more: a page asked sooner may show the last read
        time.sleep(max(0.0, read_at + 5.0 - time.monotonic()))
        later = _shown_trials(_page_text(f"{page}/trials"))
        assert later > first, (first, later)
        # stop the run; the dashboard reads the stopped run, its pick and its front
        run.send_signal(2)
        run.wait(timeout=120)
        import fault_plugin

        from nasframe.plugins import get_plugins

        if "fault_space" not in get_plugins().search_spaces:   # the run's pick, made here too
            get_plugins().register(fault_plugin, "fault_plugin", "0")
        final = load_run(run_dir)
        trials = final.trial_list()
        number = {t.number: i for i, t in enumerate(trials)}
        pick = final.pick()
        front = final.front()
        assert pick is not None and len(front) >= 2
        base = page.rsplit("/dashboard/", 1)[0]
        while True:                                      # the study's note caught up
            note = _get(f"{base}/api/studies/0?after={len(trials)}")["note"]["body"]
            if f": {len(trials)} trials" in note:
                break
            assert time.monotonic() < deadline + 120, note
            time.sleep(1)
        text = _page_text(f"{page}/note")
        assert f"Pick : trial {number[pick['number']]}, arch {pick['id']} " in text, text[:3000]
        for n, arch_id in zip(front["number"], front["id"]):
            assert f"trial {number[n]} {arch_id} " in text.split("Front", 1)[1]
        shown = _page_text(f"{page}/trials?numbers={number[pick['number']]}")
        assert re.search(r"pick True", shown) and re.search(r"front True", shown)
        # read-only: saving the note in the page is refused, with the reason
        put = urllib.request.Request(f"{base}/api/studies/0/note", method="PUT",
                                     data=json.dumps({"version": 2, "body": "x"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=30)
        assert refused.value.code == 403
        assert "read-only" in json.loads(refused.value.read())["reason"]
        # quiet: nothing but the two lines, after four pages and their API calls
        assert lines.empty(), list(lines.queue)
    finally:
        for proc in (dash, run):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_a_failed_read_of_the_live_run_is_said_once_and_the_last_read_stays(tmp_path):
    """The store replaced by a file that is not a store: the page keeps the last good read
    and the dashboard says so once (not at every request); the store back: said again."""
    from conftest import _ensure_registered

    from nasframe.optuna_study import live_storage

    _ensure_registered()
    cfg = {"name": "live", "seed": 0, "search_space": {"name": "toy"},
           "objectives": [{"name": "toy_cost"}, {"name": "toy_quality"}],
           "strategy": {"name": "random"}, "budget": {"trials": 5}}
    run_dir = tmp_path / "live"
    run_experiment(config_from_dict(cfg), run_dir)
    said: list[str] = []
    storage = live_storage(run_dir, refresh=0, warn=said.append)
    assert len(storage.get_all_trials(0)) == 5 and said == []
    db = run_dir / "trials.db"
    good = db.read_bytes()
    db.write_bytes(b"not a store" * 100)
    for _ in range(3):
        assert len(storage.get_all_trials(0)) == 5          # the last good read
    assert len(said) == 1 and "cannot read" in said[0] and "5 trials" in said[0], said
    db.write_bytes(good)
    assert len(storage.get_all_trials(0)) == 5
    assert len(said) == 2 and "read again" in said[1], said
