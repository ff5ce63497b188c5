"""Fault injection: trials that crash their process, hang, raise or return garbage; runs
killed with SIGKILL or stopped with SIGTERM and resumed; a second writer on a live run.

Every case drives the real CLI in a subprocess with the misbehaving plugin
``tests/fault_plugin.py`` loaded by name (worker processes load it too).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from nasframe.store import TrialStore

TESTS = ROOT / "tests"
ENV = {"NASFRAME_PLUGIN_MODULES": "fault_plugin",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


def experiment(tmp_path: Path, name: str = "exp", *, trials: int = 8, executor: str = "inline",
               workers: int = 1, strategy: str = "random", **faulty) -> Path:
    doc = {
        "name": name, "seed": 0,
        "search_space": {"name": "fault_space", "params": {"size": 200}},
        "objectives": [{"name": "faulty", "params": faulty}, {"name": "fault_cost"}],
        "strategy": {"name": strategy},
        "budget": {"trials": trials},
        "executor": {"name": executor, "workers": workers},
        "max_failure_fraction": 1.0,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def edit(path: Path, **changes) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **ENV, **(env or {})})


def popen(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nasframe", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV, **(env or {})})


def trials(run: Path):
    store = TrialStore.open(run, read_only=True)
    try:
        return store.trials()
    finally:
        store.close()


def sequence(run: Path) -> list[str]:
    return [t.arch.id for t in trials(run) if not t.is_reference]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_count(run: Path) -> int:
    if not (run / "trials.db").exists():
        return 0
    try:
        return sum(t.status == "running" for t in trials(run))
    except Exception:  # noqa: BLE001 - the store may be being created
        return 0


def finished_count(run: Path) -> int:
    if not (run / "trials.db").exists():
        return 0
    try:
        return sum(t.status != "running" for t in trials(run))
    except Exception:  # noqa: BLE001 - the store may be being created
        return 0


# --------------------------------------------------------------- isolation
@pytest.mark.slow
def test_a_quarter_of_the_trials_kill_their_worker_on_the_process_executor(tmp_path):
    exp = experiment(tmp_path, trials=12, executor="process", workers=2, mode="crash",
                     fraction=0.25, exit_code=7)
    run = tmp_path / "run"
    res = cli("run", str(exp), "--out", str(run), "--quiet")
    assert res.returncode == 0, res.stderr
    done = trials(run)
    assert len(done) == 12 and not [t for t in done if t.status == "running"]
    dead = [t for t in done if t.status == "failed"]
    assert 1 <= len(dead) <= 8
    for t in dead:
        assert t.failure == "died"
        assert "worker died, exit code 7 (attempt 2 of 2)" in t.error     # retried once
        assert t.attempt == 2
    assert all(t.status == "complete" for t in done if t not in dead)
    assert "12 trials" in res.stderr and f"{len(dead)} failed" in res.stderr


@pytest.mark.slow
def test_a_trial_that_kills_the_inline_driver_counts_attempts_across_resumes(tmp_path):
    exp = experiment(tmp_path, trials=4, mode="crash", xs=list(range(200)), exit_code=5,
                     fraction=0.0)
    edit(exp, references=False)
    run = tmp_path / "run"
    first = cli("run", str(exp), "--out", str(run), "--quiet")
    assert first.returncode == 5                       # os._exit takes the inline driver with it
    second = cli("resume", str(run), "--quiet")
    assert second.returncode == 5 and "killed will run again" in second.stderr
    assert trials(run)[0].attempt == 2
    # the attempts are used up: the trial fails with the reason; the others crash the same way,
    # so resume until the budget is spent (each trial twice)
    for _ in range(10):
        res = cli("resume", str(run), "--quiet", "--no-export")
        if res.returncode == 0:
            break
    assert res.returncode == 0, res.stderr
    done = trials(run)
    assert len(done) == 4 and all(t.status == "failed" for t in done)
    assert all("the run stopped while evaluating it" in t.error and "2 time(s)" in t.error
               for t in done)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["process", "inline"])
def test_a_hanging_objective_is_stopped_by_trial_timeout(tmp_path, executor):
    exp = experiment(tmp_path, trials=8, executor=executor, workers=2, mode="hang", fraction=0.25)
    edit(exp, trial_timeout="5s")
    run = tmp_path / "run"
    start = time.time()
    res = cli("run", str(exp), "--out", str(run), "--quiet", timeout=180)
    took = time.time() - start
    assert res.returncode == 0, res.stderr
    assert took < 120, took
    done = trials(run)
    hung = [t for t in done if t.status == "failed"]
    assert 1 <= len(hung) < len(done) and len(done) == 8
    assert all(t.failure == "timeout" and "timed out after 5 s" in t.error for t in hung)


@pytest.mark.parametrize("mode, words", [("raise", "RuntimeError: x="),
                                         ("inf", "returned inf, not a finite number"),
                                         ("nan", "returned nan, not a finite number")])
def test_raising_or_non_finite_values_fail_the_trial_naming_the_objective(tmp_path, mode, words):
    exp = experiment(tmp_path, trials=10, mode=mode, fraction=0.3)
    run = tmp_path / "run"
    res = cli("run", str(exp), "--out", str(run), "--quiet", "--no-export")
    assert res.returncode == 0, res.stderr
    bad = [t for t in trials(run) if t.status == "failed"]
    assert bad and all(t.error.startswith("objective 'faulty'") and words in t.error for t in bad)
    assert all(t.failure == "exception" for t in bad)
    ok = [t for t in trials(run) if t.status == "complete"]
    assert ok and all(json.dumps(dict(t.values), allow_nan=False) for t in ok)


@pytest.mark.slow
def test_dask_survives_a_dead_worker_and_a_hang(tmp_path):
    pytest.importorskip("distributed")
    exp = experiment(tmp_path, trials=6, executor="dask", workers=2, mode="crash",
                     xs=[t for t in range(200)][::3], fraction=0.0)
    run = tmp_path / "crash"
    res = cli("run", str(exp), "--out", str(run), "--quiet", "--no-export", timeout=300)
    assert res.returncode == 0, res.stderr
    dead = [t for t in trials(run) if t.status == "failed"]
    assert dead and all(t.failure == "died" and "worker died" in t.error for t in dead)
    exp = experiment(tmp_path, "hang", trials=4, executor="dask", workers=2, mode="hang",
                     fraction=0.3)
    edit(exp, trial_timeout="4s")
    run = tmp_path / "hang"
    res = cli("run", str(exp), "--out", str(run), "--quiet", "--no-export", timeout=300)
    assert res.returncode == 0, res.stderr
    hung = [t for t in trials(run) if t.status == "failed"]
    assert hung and all(t.failure == "timeout" for t in hung)


# ------------------------------------------------------------ one writer
@pytest.mark.slow
def test_resume_on_a_live_run_is_refused_and_the_live_run_keeps_its_budget(tmp_path):
    exp = experiment(tmp_path, trials=10, seconds=0.4)
    run = tmp_path / "run"
    live = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: finished_count(run) >= 2, 120, "the run to start")
    second = cli("resume", str(run), "--quiet")
    assert second.returncode == 2
    assert f"is in use by pid {live.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr
    assert live.wait(timeout=180) == 0, live.stderr.read()
    done = trials(run)
    assert sum(not t.is_reference for t in done) == 10
    assert len({t.arch.id for t in done}) == len(done)


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(tmp_path):
    exp = experiment(tmp_path, trials=6, seconds=0.4)
    run = tmp_path / "run"
    live = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: finished_count(run) >= 1, 120, "the run to start")
    live.send_signal(signal.SIGKILL)
    live.wait(timeout=30)
    res = cli("resume", str(run), "--quiet", "--no-export")
    assert res.returncode == 0, res.stderr
    assert f"took over the lock left by pid {live.pid}" in res.stderr


# -------------------------------------------------------- kill and resume
def _kill_and_resume(tmp_path: Path, exp: Path, sig: int, points: list[float]) -> tuple[Path, list]:
    run = tmp_path / f"cut_{sig}"
    codes = []
    args = ("run", str(exp), "--out", str(run), "--quiet", "--no-export")
    for delay in points:
        before = finished_count(run)
        proc = popen(*args)
        wait_for(lambda: finished_count(run) > before or proc.poll() is not None, 120, "progress")
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
            start = time.time()
            codes.append((proc.wait(timeout=60), time.time() - start))
        else:
            codes.append((proc.returncode, 0.0))
        args = ("resume", str(run), "--quiet", "--no-export")
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    return run, codes


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "ens"])
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_search(tmp_path, strategy):
    exp = experiment(tmp_path, trials=16, seconds=0.15, strategy=strategy)
    full = tmp_path / "full"
    assert cli("run", str(exp), "--out", str(full), "--quiet", "--no-export").returncode == 0
    rng = random.Random(7)
    run, codes = _kill_and_resume(tmp_path, exp, signal.SIGKILL,
                                  [rng.uniform(0.0, 1.5) for _ in range(3)])
    assert [c for c, _ in codes] == [-9] * len(codes)
    assert sequence(run) == sequence(full)                # same architectures, same order
    assert len(set(sequence(run))) == len(sequence(run))  # none repeated
    assert not [t for t in trials(run) if t.status == "running"]


@pytest.mark.slow
def test_sigterm_stops_within_seconds_without_leaving_workers_then_resumes(tmp_path):
    pids = tmp_path / "pids"
    exp = experiment(tmp_path, trials=24, seconds=0.5, executor="process", workers=2,
                     pid_dir=str(pids))
    full = tmp_path / "full"
    assert cli("run", str(exp), "--out", str(full), "--quiet", "--no-export").returncode == 0
    for p in pids.iterdir():
        p.unlink()
    run, codes = _kill_and_resume(tmp_path, exp, signal.SIGTERM, [1.0, 1.0])
    for code, took in codes:
        assert code == 143 and took < 10, codes
    worker_pids = [int(p.name) for p in pids.iterdir()]
    assert worker_pids and not [p for p in worker_pids if alive(p)]
    assert sequence(run) == sequence(full)
    done = trials(run)
    assert not [t for t in done if t.status == "running"] and all(t.attempt == 1 for t in done)


@pytest.mark.slow
def test_sigint_on_the_process_executor_exits_quickly(tmp_path):
    # trials long enough that the run cannot end on its own before the signal, however slow
    # the machine; the signal stops it within seconds anyway
    exp = experiment(tmp_path, trials=8, seconds=60, executor="process", workers=2)
    run = tmp_path / "run"
    proc = popen("run", str(exp), "--out", str(run), "--quiet")
    wait_for(lambda: running_count(run) > 0, 120, "a running trial")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    start = time.time()
    assert proc.wait(timeout=30) == 130
    assert time.time() - start < 10
    assert "nasframe resume" in proc.stderr.read()
    assert {t.failure for t in trials(run) if t.status == "running"} == {"interrupted"}


# ------------------------------------------------------- resume that helps
def test_fixed_failures_resume_and_retry(tmp_path):
    exp = experiment(tmp_path, trials=12, mode="ok", fraction=0.6)
    edit(exp, max_failure_fraction=0.4)
    run = tmp_path / "run"
    broken = {"FAULT_BROKEN": "1"}
    res = cli("run", str(exp), "--out", str(run), "--quiet", "--no-export", env=broken)
    assert res.returncode == 1 and "--retry-failed" in res.stderr
    failed_before = [t.number for t in trials(run) if t.status == "failed"]
    assert failed_before
    # the bug fixed: the failure fraction counts failures since this start only
    res = cli("resume", str(run), "--quiet", "--no-export", "--retry-failed")
    assert res.returncode == 0, res.stderr
    done = trials(run)
    assert sum(not t.is_reference for t in done) == 12
    assert all(t.status == "complete" for t in done)
    assert all(done[n].attempt == 2 for n in failed_before)


def test_resume_applies_safe_changes_and_refuses_the_rest(tmp_path):
    exp = experiment(tmp_path, trials=5)
    run = tmp_path / "run"
    assert cli("run", str(exp), "--out", str(run), "--quiet", "--no-export").returncode == 0
    edit(exp, budget={"trials": 8}, trial_timeout="1m")
    res = cli("resume", str(run), str(exp), "--quiet", "--no-export")
    assert res.returncode == 0, res.stderr
    assert "applied: budget.trials: 5 -> 8" in res.stderr and "applied: trial_timeout" in res.stderr
    assert sum(not t.is_reference for t in trials(run)) == 8
    doc = yaml.safe_load(exp.read_text())
    doc["search_space"]["params"]["size"] = 100
    exp.write_text(yaml.safe_dump(doc))
    res = cli("resume", str(run), str(exp), "--quiet", "--no-export")
    assert res.returncode == 2
    assert "search_space.params.size: 200 -> 100: changes the search" in res.stderr
    assert sum(not t.is_reference for t in trials(run)) == 8
