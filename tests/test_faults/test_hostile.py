"""A hostile or careless user: experiment files that name code, objectives that raise the
interrupts a user would send, children that outlive their driver, a store deleted or
swapped under a live run, exports killed midway, and inputs whose errors must not mislead.

Real processes and real signals throughout (the CLI in subprocesses, ``kill -9``,
SIGTERM); the misbehaving components are ``tests/fault_plugin.py``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from test_faults import ENV, alive, cli, edit, experiment, finished_count, popen, trials, wait_for

MARKER_MODULE = '''
import pathlib, os
pathlib.Path(os.environ["NASFRAME_TEST_MARKER"]).write_text("imported")
import optuna
class Sampler(optuna.samplers.RandomSampler):
    pass
'''


# ------------------------------------------------------------ no code from the file
@pytest.fixture
def planted(tmp_path):
    """A module and an OptunaHub package that leave a marker file when imported."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "planted_sampler.py").write_text(MARKER_MODULE)
    hub = tmp_path / "hub" / "samplers" / "planted"
    hub.mkdir(parents=True)
    (hub / "__init__.py").write_text(MARKER_MODULE)
    marker = tmp_path / "marker"
    env = {"NASFRAME_TEST_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", ""),
                                          str(Path(__file__).parents[1])])}
    return tmp_path, marker, env


@pytest.mark.parametrize("strategy", [
    {"name": "optuna", "params": {"sampler": "optunahub:samplers/planted"}},
    pytest.param({"name": "optuna", "params": {"sampler": "planted_sampler.Sampler"}},
                 marks=pytest.mark.slow),
    pytest.param({"name": "optuna", "params": {"sampler": "planted_sampler:Sampler"}},
                 marks=pytest.mark.slow),
    pytest.param({"name": "nni", "params": {"tuner": "planted_sampler.Sampler"}},
                 marks=pytest.mark.slow),
], ids=["optunahub", "optuna-class-path", "optuna-colon-path", "nni-class-path"])
def test_an_experiment_file_never_makes_validate_or_run_import_code(planted, strategy):
    pytest.importorskip("optuna")
    if strategy["name"] == "nni":
        pytest.importorskip("nni")
    tmp_path, marker, env = planted
    if "optunahub" in strategy["params"].get("sampler", ""):
        pytest.importorskip("optunahub")
        strategy["params"]["optunahub_registry"] = str(tmp_path / "hub")
    exp = experiment(tmp_path, trials=2, strategy="random")
    edit(exp, strategy=strategy)
    spec = strategy["params"].get("sampler") or strategy["params"]["tuner"]
    for command in (("validate", str(exp)), ("run", str(exp), "--out", str(tmp_path / "r1"))):
        res = cli(*command, env=env, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "--allow-code" in res.stderr and spec in res.stderr
        assert "Traceback" not in res.stderr
        assert not marker.exists(), f"{command[0]} imported the planted code"
    # allowed from outside the file: validate still imports nothing; run does
    res = cli("validate", str(exp), "--allow-code", spec, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), "validate imported the planted code"
    if strategy["name"] == "optuna":
        res = cli("run", str(exp), "--out", str(tmp_path / "r2"), "--quiet", "--no-export",
                  env={**env, "NASFRAME_ALLOW_CODE": spec.replace("planted", "plant*")},
                  timeout=120)
        assert res.returncode == 0, res.stderr
        assert marker.exists()


# ------------------------------------------------------------ interrupts an objective raises
@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "process"])
@pytest.mark.parametrize("mode, name", [("interrupt", "KeyboardInterrupt"), ("exit", "SystemExit")])
def test_an_objective_that_raises_an_interrupt_fails_alone(tmp_path, executor, mode, name):
    exp = experiment(tmp_path, trials=6, executor=executor, mode=mode, xs=[3, 57, 101, 150],
                     fraction=0.0)
    edit(exp, search_space={"name": "fault_space", "params": {"size": 8}}, references=False,
         strategy={"name": "grid"})
    run = tmp_path / "run"
    t0 = time.time()
    res = cli("run", str(exp), "--out", str(run), "--quiet", timeout=240)
    assert res.returncode == 0, res.stderr
    assert "done" in res.stderr and "6 trials, 1 failed" in res.stderr
    done = trials(run)
    bad = [t for t in done if t.status == "failed"]
    assert [t.arch["x"] for t in bad] == [3]
    first = bad[0].error.splitlines()[0]
    assert first.startswith(f"objective 'faulty': raised {name}") and "Traceback" not in first
    assert bad[0].failure == "exception" and bad[0].attempt == 1
    assert all(t.status == "complete" for t in done if t not in bad)
    # nothing left to run: resume finishes at once
    again = cli("resume", str(run), "--quiet", timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(trials(run)) == 6
    print(f"{executor}/{mode}: exit 0 in {time.time() - t0:.1f} s")


@pytest.mark.slow
def test_a_real_ctrl_c_still_stops_the_run_and_resume_finishes(tmp_path):
    exp = experiment(tmp_path, trials=6, seconds=0.4)
    run = tmp_path / "run"
    proc = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: finished_count(run) >= 2, 120, "two trials")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert any(t.failure == "interrupted" for t in trials(run) if t.status == "running")
    res = cli("resume", str(run), "--quiet")
    assert res.returncode == 0, res.stderr
    assert sum(not t.is_reference for t in trials(run)) == 6


# ------------------------------------------------------------ children and workers die with the driver
def _pids(folder: Path, prefix: str = "") -> list[int]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        name = p.name[len(prefix):] if p.name.startswith(prefix) else None
        if name and name.isdigit():
            out.append(int(name))
    return out


@pytest.mark.slow
def test_a_child_forked_by_an_inline_objective_neither_holds_the_lock_nor_outlives_kill_9(tmp_path):
    pid_dir = tmp_path / "pids"
    exp = experiment(tmp_path, trials=20, mode="fork", fraction=1.0, seconds=0.3,
                     pid_dir=str(pid_dir))
    run = tmp_path / "run"
    proc = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: len(_pids(pid_dir, "child-")) >= 2, 120, "forked children")
    children = _pids(pid_dir, "child-")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    t0 = time.time()
    wait_for(lambda: not any(alive(p) for p in _pids(pid_dir, "child-")), 10, "children to die")
    print(f"{len(children)} forked children gone {time.time() - t0:.2f} s after kill -9")
    status = cli("status", str(run), "-f", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "stopped"
    res = cli("resume", str(run), "--quiet", "--no-export", timeout=240)
    assert res.returncode == 0, res.stderr
    assert "is in use" not in res.stderr


@pytest.mark.slow
def test_a_child_that_still_holds_the_lock_is_named(tmp_path):
    """A lock holder the driver left behind (not a nasframe child: started by hand with the
    lock's descriptor) is named in the error, not the dead driver."""
    import subprocess
    import sys

    run = tmp_path / "run"
    exp = experiment(tmp_path, trials=2)
    assert cli("run", str(exp), "--out", str(run), "--quiet", "--no-export").returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(run / '.nasframe.lock')!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.write(fd, json.dumps({'pid': 999999, 'host': 'h', "
        "'command': 'nasframe run', 'since': 0}).encode())\n"
        "print('locked', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = cli("resume", str(run), "--quiet")
        assert res.returncode == 2
        assert f"pid {holder.pid}" in res.stderr and "no longer running" in res.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_process_workers_are_gone_within_seconds_of_the_drivers_kill_9(tmp_path):
    pid_dir = tmp_path / "pids"
    exp = experiment(tmp_path, trials=6, executor="process", workers=2, mode="hang",
                     fraction=1.0, pid_dir=str(pid_dir))
    run = tmp_path / "run"
    proc = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: len(_pids(pid_dir)) >= 2, 180, "two hanging workers")
    workers = _pids(pid_dir)
    assert all(alive(p) for p in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    t0 = time.time()
    wait_for(lambda: not any(alive(p) for p in workers), 10, "workers to die with the driver")
    print(f"{len(workers)} hanging workers gone {time.time() - t0:.2f} s after kill -9")


@pytest.mark.slow
def test_a_dask_timeout_costs_the_timeout_and_a_few_seconds(tmp_path):
    pytest.importorskip("distributed")
    exp = experiment(tmp_path, trials=4, executor="dask", workers=1, mode="hang",
                     xs=[1], fraction=0.0)
    edit(exp, search_space={"name": "fault_space", "params": {"size": 4}}, references=False,
         strategy={"name": "grid"}, trial_timeout=3)
    run = tmp_path / "run"
    res = cli("run", str(exp), "--out", str(run), "--quiet", "--no-export", timeout=300)
    assert res.returncode == 0, res.stderr
    done = sorted(trials(run), key=lambda t: t.number)
    timed = [t for t in done if t.failure == "timeout"]
    assert len(timed) == 1
    t = timed[0]
    assert t.finished - t.started <= 3 + 2, (t.finished - t.started)
    after = [u for u in done if u.number == t.number + 1]
    # the driver waits only for the replacement worker to start (no 30 s connect timeout)
    stall = (after[0].started if after else t.finished) - t.started
    print(f"timed-out trial: {t.finished - t.started:.1f} s; next trial started {stall:.1f} s "
          f"after it (trial_timeout 3 s; load {os.getloadavg()[0]:.1f})")
    assert stall < 3 + 25


# ------------------------------------------------------------ the store under a live run
def _slow_run(tmp_path: Path, name: str = "exp") -> tuple[Path, Path]:
    exp = experiment(tmp_path, name=name, trials=400, seconds=0.1)
    edit(exp, references=False)
    return exp, tmp_path / f"run-{name}"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_deleted_or_replaced_mid_run_stops_the_run_naming_it(tmp_path, how):
    exp, run = _slow_run(tmp_path)
    other = None
    if how == "replaced":
        other_exp = experiment(tmp_path, name="other", trials=3)
        other = tmp_path / "other"
        assert cli("run", str(other_exp), "--out", str(other), "--quiet",
                   "--no-export").returncode == 0
        other_count = len(trials(other))
    proc = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: finished_count(run) >= 5, 120, "five trials")
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            (run / f"trials.db{suffix}").unlink(missing_ok=True)
    else:
        os.replace(other / "trials.db", run / "trials.db")
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    print(f"store {how}: exit {proc.returncode} {time.time() - t0:.2f} s later")
    assert proc.returncode == 1, err
    assert f"{run / 'trials.db'}" in err and how in err
    assert "done" not in err
    recovered = sorted(run.glob("trials.recovered-*.db"))
    assert len(recovered) == 1, err
    db = sqlite3.connect(recovered[0])
    kept = db.execute("SELECT COUNT(*) FROM trials WHERE status='complete'").fetchone()[0]
    db.close()
    assert kept >= 5
    if how == "replaced":   # the other run's store was not written to
        db = sqlite3.connect(run / "trials.db")
        assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == other_count
        db.close()


# ------------------------------------------------------------ exports that are stopped
@pytest.mark.slow
def test_an_export_killed_at_any_point_is_followed_by_one_that_succeeds(tmp_path):
    exp = experiment(tmp_path, trials=30)
    run = tmp_path / "run"
    assert cli("run", str(exp), "--out", str(run), "--quiet", "--no-export").returncode == 0
    t0 = time.time()
    assert cli("export", str(run)).returncode == 0
    full = time.time() - t0
    rng = random.Random(0)
    for i, sig in enumerate([signal.SIGKILL, signal.SIGTERM, signal.SIGINT] * 2):
        for f in list(run.iterdir()):          # from scratch: no export, no manifest
            if f.name == "front":
                shutil.rmtree(f)
            elif f.name not in ("trials.db", ".nasframe.lock", "cache") and f.is_file():
                f.unlink()
        proc = popen("export", str(run))
        time.sleep(rng.uniform(0.2, max(0.3, full * 0.9)))
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        res = cli("export", str(run))
        assert res.returncode == 0, (i, sig, res.stderr)
        assert (run / "pareto.json").exists() and (run / "trials.csv").exists()


def test_a_run_into_a_folder_of_user_files_is_refused_before_the_search(tmp_path):
    exp = experiment(tmp_path, trials=3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = cli_here("run", str(exp), "--out", str(mine), "--quiet", timeout=60)
    assert res.returncode == 2
    assert "notes.txt" in res.stderr and "--out" in res.stderr
    assert not (mine / "trials.db").exists()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a folder nasframe prepared (a cache) but holding a foreign export name
    prepared = tmp_path / "prepared"
    (prepared / "cache").mkdir(parents=True)
    (prepared / "trials.csv").write_text("mine")
    res = cli_here("run", str(exp), "--out", str(prepared), "--quiet", timeout=60)
    assert res.returncode == 2 and "trials.csv" in res.stderr
    assert (prepared / "trials.csv").read_text() == "mine"


# ------------------------------------------------------------ silently wrong, misleading
@pytest.mark.parametrize("key", ["status", "feasible", "number", "error", "pick", "arch.x"])
def test_an_objective_id_that_is_a_results_column_is_refused(tmp_path, key):
    exp = experiment(tmp_path)
    doc = yaml.safe_load(exp.read_text())
    doc["objectives"][1]["id"] = key
    exp.write_text(yaml.safe_dump(doc))
    res = cli_here("validate", str(exp))
    assert res.returncode == 2
    assert f"'{key}' is a column of the results" in res.stderr and "Traceback" not in res.stderr


def cli_here(*args: str, env: dict | None = None, timeout: float = 300):
    """``cli`` in this process, for what the CLI says and does where no process boundary is
    under test (see ``conftest.cli_here``): the fault plugin registered here, as
    ``NASFRAME_PLUGIN_MODULES`` registers it in a new process (its workers still get it
    from the environment)."""
    import fault_plugin
    from conftest import cli_here as here
    from nasframe.plugins import get_plugins

    plugins = get_plugins()
    if "fault_space" not in plugins.search_spaces:
        plugins.register(fault_plugin, "fault_plugin")
    return here(*args, env={**ENV, **(env or {})}, timeout=timeout)


def test_an_arch_file_that_is_not_one_is_never_quoted(tmp_path):
    exp = experiment(tmp_path)
    for i, text in enumerate(["password: hunter2-very-secret\ntoken: abcdef0123\n",
                              "hunter2-very-secret\n", "- hunter2-very-secret\n",
                              "x: {hunter2-very-secret: 1}\n"]):
        f = tmp_path / f"f{i}.txt"
        f.write_text(text)
        res = cli_here("evaluate", str(exp), "--arch", str(f))
        assert res.returncode == 2, res.stderr
        assert "hunter2" not in res.stderr and "abcdef" not in res.stderr, res.stderr


def test_messages_for_look_alike_keys_negative_seeds_and_paths(tmp_path):
    exp = experiment(tmp_path)
    doc = yaml.safe_load(exp.read_text())
    doc["budget"] = {"tri\u200bals": 5}
    doc["seed"] = -1
    doc["strategy"] = {"name": "r\u0430ndom"}        # a Cyrillic a
    exp.write_text(yaml.safe_dump(doc, allow_unicode=True))
    res = cli_here("validate", str(exp))
    assert res.returncode == 2
    assert "tri\\u200bals" in res.stderr and "U+200B ZERO WIDTH SPACE" in res.stderr
    assert "seed:" in res.stderr and "max_retries" not in res.stderr
    for name in ("../../escape", "..", ""):
        doc = yaml.safe_load(experiment(tmp_path).read_text())
        doc["name"] = name
        exp.write_text(yaml.safe_dump(doc))
        res = cli_here("validate", str(exp))
        assert res.returncode == 2 and "name:" in res.stderr, (name, res.stderr)
    doc = yaml.safe_load(experiment(tmp_path).read_text())
    doc["output"] = "$HOME/x"
    exp.write_text(yaml.safe_dump(doc))
    res = cli_here("validate", str(exp))
    assert res.returncode == 2 and "not expanded" in res.stderr


def test_output_with_a_tilde_is_the_home_folder(tmp_path):
    exp = experiment(tmp_path, trials=2)
    edit(exp, output="~/nasframe-tilde-run")
    res = cli_here("run", str(exp), "--quiet", "--no-export", env={"HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "home" / "nasframe-tilde-run" / "trials.db").exists()
    assert not (Path.cwd() / "~").exists()


def test_sqlite_errors_name_the_store_and_the_fix(tmp_path):
    from nasframe.store import _explain

    path = tmp_path / "run" / "trials.db"
    locked = str(_explain(sqlite3.OperationalError("database is locked"), path))
    assert str(path) in locked and "resume" in locked
    ro = str(_explain(sqlite3.OperationalError("attempt to write a readonly database"), path))
    assert str(path) in ro and "read-only" in ro and "writable" in ro
