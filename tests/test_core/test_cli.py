"""The CLI as a user meets it: exit codes and messages, in real subprocesses where the process
is part of what is tested (the first run, signals, pipes), in this process where only what the
CLI says is (``cli_here``: no new interpreter to start)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, cli_here, run_cli


def _write(tmp_path, doc, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    return p


FAST = {
    "name": "cli",
    "search_space": {"name": "conv_denoiser", "params": {"depths": [1, 2], "widths": [4, 8],
                                                         "kernels": [3], "input_size": 16}},
    "objectives": [{"name": "params"}, {"name": "gmacs"}],
    "strategy": {"name": "grid"},
    "budget": {"trials": 6},
}


def test_validate_ok_and_broken_yaml_exit_2(tmp_path):
    ok = run_cli("validate", str(_write(tmp_path, FAST)))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "conv_denoiser" in ok.stdout
    bad = run_cli("validate", str(_write(tmp_path, "search_space: {name: x\n", "bad.yaml")))
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid YAML at line" in lines[0] and "Traceback" not in bad.stderr


def test_unknown_strategy_is_one_line_with_choices(tmp_path):
    doc = dict(FAST, strategy={"name": "nsga"})
    res = cli_here("validate", str(_write(tmp_path, doc)))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown strategy 'nsga'" in res.stderr and "available: ens, eps_bo, grid, nni, optuna, random" in res.stderr
    debug = cli_here("validate", str(_write(tmp_path, doc)), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_missing_file_and_bad_run_dir_exit_2(tmp_path):
    assert cli_here("validate", str(tmp_path / "nope.yaml")).returncode == 2
    res = cli_here("resume", str(tmp_path))
    assert res.returncode == 2 and "not a nasframe run directory" in res.stderr


def test_plugins_lists_builtins():
    res = run_cli("plugins")
    assert res.returncode == 0
    for name in ("conv_denoiser", "random", "grid", "params", "gmacs", "latency"):
        assert name in res.stdout
    assert "builtin_plugins" in res.stdout


def test_run_export_evaluate_round_trip(tmp_path):
    exp = _write(tmp_path, FAST)
    run_dir = tmp_path / "run"
    res = run_cli("run", str(exp), "--out", str(run_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    for name in ("trials.csv", "pareto.json", "pareto.png", "hypervolume.png"):
        assert (run_dir / name).is_file()
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    member = front[0]
    res = cli_here("evaluate", str(exp), "--arch", str(run_dir / "front" / f"{member['id']}.yaml"),
                  "--out", str(run_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["id"] == member["id"]
    for key in ("params", "gmacs"):
        assert doc["values"][key]["value"] == member["values"][key]["value"]
        assert doc["values"][key]["provenance"]["kind"] == "proxy"
    ref = cli_here("evaluate", str(exp), "--arch", "smallest", "--out", str(run_dir), "--quiet")
    assert ref.returncode == 0 and json.loads(ref.stdout)["origin"] == "reference:smallest"
    bad = cli_here("evaluate", str(exp), "--arch", "nonexistent", "--quiet")
    assert bad.returncode == 2 and "available: " in bad.stderr


def _statuses(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT number, arch_id, status, \"values\" FROM trials ORDER BY number").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_kill_9_then_resume_completes_budget_without_loss_or_repeat(tmp_path):
    doc = {
        "name": "kill",
        "search_space": {"name": "conv_denoiser", "params": {"input_size": 32}},
        "objectives": [{"name": "params"},
                       {"name": "latency", "params": {"options": {"repeats": 30, "warmup": 2}}}],
        "strategy": {"name": "random"},
        "budget": {"trials": 12},
        "references": False,
    }
    exp = _write(tmp_path, doc)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nasframe", "run", str(exp), "--out", str(run_dir),
                             "--quiet", "--no-export"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = run_dir / "trials.db"
    deadline = time.time() + 120
    before = []
    while time.time() < deadline:
        time.sleep(0.05)
        assert proc.poll() is None, f"the run ended on its own (exit {proc.returncode}) before it could be killed"
        if db.exists():
            try:
                before = _statuses(db)
            except sqlite3.OperationalError:
                continue
            if sum(s == "complete" for _, _, s, _ in before) >= 4 and before[-1][2] == "running":
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _statuses(db)
    done_before = [r for r in before if r[2] == "complete"]
    assert 4 <= len(done_before) < 12
    res = run_cli("resume", str(run_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    after = _statuses(db)
    assert [r[0] for r in after] == list(range(12))
    assert len({r[1] for r in after}) == 12  # no architecture evaluated twice
    assert all(r[2] == "complete" for r in after)
    assert after[:len(done_before)] == done_before  # completed trials untouched


@pytest.mark.parametrize("executor", [pytest.param("process", marks=pytest.mark.slow),
                                      pytest.param("dask", marks=pytest.mark.slow)])
def test_parallel_executors_give_the_same_trials_as_inline(tmp_path, executor):
    if executor == "dask":
        pytest.importorskip("dask.distributed")
    doc = dict(FAST, strategy={"name": "random"}, search_space={"name": "conv_denoiser",
                                                               "params": {"input_size": 16}})
    inline = _write(tmp_path, doc, "inline.yaml")
    pooled = _write(tmp_path, dict(doc, executor={"name": executor, "workers": 2}), "pool.yaml")
    for exp, out in ((inline, "a"), (pooled, "b")):
        res = run_cli("run", str(exp), "--out", str(tmp_path / out), "--quiet", "--no-export")
        assert res.returncode == 0, res.stderr
    assert _statuses(tmp_path / "a" / "trials.db") == _statuses(tmp_path / "b" / "trials.db")
