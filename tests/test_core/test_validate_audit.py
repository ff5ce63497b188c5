"""Validate = run: every input the audit found breaking a run later (or hanging, or
exploding) is refused up front with exit code 2, one short message, no traceback;
hostile files are refused in well under a second; stores nasframe did not write are
never modified."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli_here
from nasframe.config import load_config
from nasframe.errors import ConfigError
from nasframe.experiment import Experiment

BASE = {
    "name": "audit", "seed": 0,
    "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
    "objectives": [{"name": "params"}, {"name": "gmacs"}],
    "strategy": {"name": "random"},
    "budget": {"trials": 2},
}

BOMB_400 = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
            + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n"
                      for a, b in zip("abcdefg", "bcdefgh")))
LAUGHS = BOMB_400 + "i: &i [" + ", ".join(["*h"] * 9) + "]\n"


def _with(**changes) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return doc


CASES = {
    "reference_point key": (_with(reference_point={"gmacs": 1.0, "latency": 3.0}),
                            "reference_point.latency: not an objective of this experiment"),
    "strategy param": (_with(strategy={"name": "random", "params": {"max_retries": 0}}),
                       "strategy.params.max_retries: Input should be greater than or equal to 1"),
    "reference name": (_with(references=["smallest", "biggest"]),
                       "references[1]: search space 'conv_denoiser' has no reference "
                       "architecture 'biggest'"),
    "input_shape size": (_with(objectives=[{"name": "gmacs", "params": {
        "input_shape": [1, 10, 10000, 100000]}}]), "elements is more than the"),
    "depths size": (_with(search_space__params__depths=[100000000]),
                    "search_space.params.depths[0]: Input should be less than or equal to 256"),
    "workers": (_with(executor={"name": "process", "workers": 100000}),
                "executor.workers: Input should be less than or equal to 1024"),
    "trials": (_with(budget={"trials": 10**9}), "budget.trials: Input should be less than or equal"),
    "executor param": (_with(executor={"name": "dask", "params": {"adress": "x"}}),
                       "executor.params.adress: unknown field; did you mean 'address'?"),
    "capability": (_with(objectives=[{"name": "psnr"}]),
                   "objective 'psnr' needs a search space that provides validation_pairs"),
}

RAW = {
    "nan time": ("search_space: {name: conv_denoiser}\nobjectives: [{name: params}]\n"
                 "budget: {trials: 2, time: .nan}\n", "budget.time: a duration must be a positive, finite"),
    "duplicate keys": ("search_space: {name: conv_denoiser}\nobjectives: [{name: params}]\n"
                       "budget: {trials: 2}\nbudget: {trials: 3}\n", "duplicate key 'budget' at line 4"),
    "alias bomb": (BOMB_400 + "search_space: {name: conv_denoiser, params: {depths: *h}}\n",
                   "expands to more than 100,000 values"),
    "billion laughs": (LAUGHS, "expands to more than 100,000 values"),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nesting deeper than 64 levels"),
}


def _short_single_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_validate_rejects_what_run_would(tmp_path, name, plugins):
    doc, words = CASES[name]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(load_config(exp), plugins, str(exp))
    assert words in str(err.value)
    # refused before anything is built: the second refusal (the plugin's module is
    # imported by now; a first import of dask alone can take a second on busy cores)
    # takes no time to speak of
    start = time.perf_counter()
    with pytest.raises(ConfigError):
        Experiment.from_config(load_config(exp), plugins, str(exp))
    assert time.perf_counter() - start < 1.0
    res = cli_here("validate", str(exp))
    assert res.returncode == 2
    assert words in _short_single_error(res.stderr)


@pytest.mark.parametrize("name", list(RAW))
def test_hostile_or_broken_files_are_refused_quickly(tmp_path, name):
    text, words = RAW[name]
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert time.perf_counter() - start < 1.0
    assert words in str(err.value) and len(str(err.value)) < 400
    res = cli_here("validate", str(exp))
    assert res.returncode == 2
    assert words in _short_single_error(res.stderr)


def test_binary_garbage_and_huge_files(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    res = cli_here("validate", str(garbage))
    assert res.returncode == 2 and "a binary file" in _short_single_error(res.stderr)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    res = cli_here("validate", str(latin))
    assert res.returncode == 2 and "not UTF-8 text" in _short_single_error(res.stderr)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * 2_000_000 + "\n")
    res = cli_here("validate", str(huge))
    assert res.returncode == 2 and "more than the 1,000,000" in _short_single_error(res.stderr)
    res = cli_here("validate", str(tmp_path))
    assert res.returncode == 2 and "not a experiment file" in _short_single_error(res.stderr) \
        or "a directory" in res.stderr


def test_an_output_path_that_is_a_file(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "taken"
    out.write_text("mine")
    res = cli_here("run", str(exp), "--out", str(out))
    assert res.returncode == 2 and "exists and is not a directory" in _short_single_error(res.stderr)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + b"\x01" * 100, b"not a db" * 50])
def test_broken_or_foreign_stores_are_refused_and_left_alone(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    db = run / "trials.db"
    db.write_bytes(content)
    for args in (("resume", str(run)), ("export", str(run)), ("trials", str(run))):
        res = cli_here(*args)
        assert res.returncode == 2, (args, res.stderr)
        line = _short_single_error(res.stderr)
        assert "trials.db" in line and "not a nasframe trial store" in line
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(BASE))
    res = cli_here("run", str(exp), "--out", str(run))
    assert res.returncode == 2 and "is not a nasframe run" in _short_single_error(res.stderr)
    assert db.read_bytes() == content                  # never written into
    assert sorted(p.name for p in run.iterdir()) in (["trials.db"], [".nasframe.lock", "trials.db"])


def test_a_store_of_another_program_is_not_modified(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / "trials.db")
    db.execute("CREATE TABLE notes (x TEXT)")
    db.commit()
    db.close()
    before = (run / "trials.db").read_bytes()
    res = cli_here("resume", str(run))
    assert res.returncode == 2 and "a database without nasframe's tables" in res.stderr
    assert (run / "trials.db").read_bytes() == before


def test_run_dir_arguments(tmp_path):
    for args, words in ((("resume", str(tmp_path / "nowhere")), "no such run directory"),
                        (("resume", str(tmp_path)), "is not a nasframe run directory"),
                        (("export", str(tmp_path / "nowhere")), "no such run directory")):
        res = cli_here(*args)
        assert res.returncode == 2 and words in _short_single_error(res.stderr)
    (tmp_path / "file").write_text("x")
    res = cli_here("resume", str(tmp_path / "file"))
    assert res.returncode == 2 and "not a directory" in _short_single_error(res.stderr)


@pytest.mark.parametrize("doc, words", [
    ({"depth": {"nested": 1}}, "decision 'depth' holds a mapping"),
    ({"architecture": {"depth": {"a": 1}}}, "decision 'depth' holds a mapping"),
    ([1, 2, 3], "expected a mapping of decision -> value"),
    ({"depth": 99, "width": 8, "residual_blocks": False}, "not an architecture of 'conv_denoiser'"),
])
def test_arch_files(tmp_path, doc, words):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(BASE))
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump(doc))
    res = cli_here("evaluate", str(exp), "--arch", str(arch), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert words in _short_single_error(res.stderr)


def test_arch_bomb_file(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(BASE))
    arch = tmp_path / "arch.yaml"
    arch.write_text(LAUGHS)
    res = cli_here("evaluate", str(exp), "--arch", str(arch), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "expands to more than" in _short_single_error(res.stderr)


def test_export_writes_only_its_own_files_and_works_on_a_read_only_run(tmp_path, plugins,
                                                                          toy_config):
    from nasframe.config import config_from_dict
    from nasframe.export import export_run
    from nasframe.runner import run_experiment

    run = tmp_path / "run"
    run_experiment(config_from_dict(toy_config), run)
    export_run(run)
    mine = run / "front" / "notes.yaml"
    mine.write_text("my notes")
    export_run(run)                                    # again: replaces its own files only
    assert mine.read_text() == "my notes"
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "trials.csv").write_text("someone else's table")
    with pytest.raises(ConfigError, match="were not written by `nasframe export`"):
        export_run(run, out)
    assert (out / "trials.csv").read_text() == "someone else's table"
    # a read-only run directory exports with --out
    (run / "trials.db-wal").unlink(missing_ok=True)
    (run / "trials.db-shm").unlink(missing_ok=True)
    for p in [run, *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        paths = export_run(run, tmp_path / "ro_out")
        assert paths["trials.csv"].exists()
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_store_in_a_directory_that_cannot_be_written_is_read_immutably(tmp_path, plugins,
                                                                         toy_config, monkeypatch):
    from nasframe import store as store_module
    from nasframe.config import config_from_dict
    from nasframe.results import load_run
    from nasframe.runner import run_experiment

    run = tmp_path / "run"
    run_experiment(config_from_dict(toy_config), run)
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)
    run_view = load_run(run)                 # opened with immutable=1: no -wal/-shm created
    assert len(run_view.trial_list()) == 8 and run_view.analysis.hypervolume > 0
