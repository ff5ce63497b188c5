import json
import math

import pytest

from nasframe.config import config_from_dict
from nasframe.errors import ConfigError, RunError
from nasframe.export import export_run
from nasframe.runner import Runner, resume_run, run_experiment
from nasframe.store import TrialStore


def _run(cfg_dict, run_dir):
    return run_experiment(config_from_dict(cfg_dict), run_dir, quiet=True)


def _sequence(run_dir):
    store = TrialStore.open(run_dir)
    try:
        return [(t.arch.id, t.status, dict(t.values)) for t in store.trials()]
    finally:
        store.close()


def test_same_config_and_seed_same_trials(tmp_path, plugins, toy_config):
    _run(toy_config, tmp_path / "a")
    _run(toy_config, tmp_path / "b")
    assert _sequence(tmp_path / "a") == _sequence(tmp_path / "b")
    toy_config["seed"] = 1
    _run(toy_config, tmp_path / "c")
    assert _sequence(tmp_path / "a") != _sequence(tmp_path / "c")


def test_failures_are_kept_and_search_goes_on(tmp_path, plugins, toy_config):
    toy_config["objectives"][1]["params"] = {"fail_width": 8}
    toy_config["budget"] = {"trials": 12}
    summary = _run(toy_config, tmp_path / "r")
    store = TrialStore.open(tmp_path / "r")
    trials = store.trials()
    failed = [t for t in trials if t.status == "failed"]
    assert summary.trials == 12 and failed and summary.failed == len(failed)
    assert all(t.arch["width"] == 8 and "broken on purpose" in t.error for t in failed)
    assert all(t.status == "complete" for t in trials if t.arch["width"] != 8)


def test_too_many_failures_stop_with_message_and_keep_results(tmp_path, plugins, toy_config):
    toy_config["search_space"]["params"] = {"widths": [8]}
    toy_config["objectives"][1]["params"] = {"fail_width": 8}
    toy_config["budget"] = {"trials": 6}
    with pytest.raises(RunError, match="trials run since this start failed .*nasframe resume"):
        _run(toy_config, tmp_path / "r")
    assert len(TrialStore.open(tmp_path / "r").trials()) == 5


def test_constraints_prune_and_mark_infeasible(tmp_path, plugins, toy_config):
    toy_config["constraints"] = ["toy_cost <= 8"]
    toy_config["budget"] = {"trials": 18}
    toy_config["strategy"] = {"name": "grid"}
    _run(toy_config, tmp_path / "r")
    trials = TrialStore.open(tmp_path / "r").trials()
    assert len(trials) == 18
    for t in trials:
        cost = t.values["toy_cost"]
        assert t.feasible is (cost <= 8)
        if cost > 8:  # the cheap objective broke the constraint: the expensive one is skipped
            assert t.status == "infeasible" and "toy_quality" not in t.values
            assert t.violation == cost - 8
    paths = export_run(tmp_path / "r")
    front = json.loads(paths["pareto.json"].read_text())["front"]
    assert front and all(m["values"]["toy_cost"]["value"] <= 8 for m in front)


def test_constraint_on_an_objective_not_searched(tmp_path, plugins, toy_config):
    toy_config["objectives"] = [{"name": "toy_quality"}]
    toy_config["constraints"] = ["toy_cost >= 4"]
    _run(toy_config, tmp_path / "r")
    trials = TrialStore.open(tmp_path / "r").trials()
    assert all("toy_cost" in t.values and t.feasible is (t.values["toy_cost"] >= 4) for t in trials)


def test_grid_exhausts_and_duplicates_are_evaluated_once(tmp_path, plugins, toy_config):
    toy_config["strategy"] = {"name": "grid"}
    toy_config["budget"] = {"trials": 100}
    summary = _run(toy_config, tmp_path / "r")
    assert summary.stopped_because == "strategy exhausted"
    ids = [a for a, _, _ in _sequence(tmp_path / "r")]
    assert len(ids) == len(set(ids)) == 18


def test_time_budget(tmp_path, plugins, toy_config):
    toy_config["objectives"][1]["params"] = {"sleep": 0.2}
    toy_config["budget"] = {"trials": 1000, "time": 1}
    summary = _run(toy_config, tmp_path / "r")
    assert summary.stopped_because == "time budget" and 2 <= summary.trials <= 8


def test_run_dir_is_not_overwritten(tmp_path, plugins, toy_config):
    _run(toy_config, tmp_path / "r")
    with pytest.raises(ConfigError, match="nasframe resume"):
        _run(toy_config, tmp_path / "r")


def test_resume_after_interrupt_continues_the_same_search(tmp_path, plugins, toy_config, monkeypatch):
    toy_config["budget"] = {"trials": 10}
    toy_config["search_space"]["params"] = {"widths": [2, 4, 8, 16, 32], "max_depth": 4}
    _run(toy_config, tmp_path / "full")
    # interrupt the second run in the middle of the 6th trial's evaluation
    from nasframe import experiment

    calls = {"n": 0}
    original = experiment.Experiment.evaluate

    def flaky(self, trial, ctx, skip_infeasible=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, trial, ctx, skip_infeasible)

    monkeypatch.setattr(experiment.Experiment, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        Runner.start(config_from_dict(toy_config), tmp_path / "cut", quiet=True).run()
    store = TrialStore.open(tmp_path / "cut")
    assert [t.status for t in store.trials()] == ["complete"] * 5 + ["running"]
    assert store.trial(5).failure == "interrupted"     # not the trial's fault: no attempt counted
    store.close()
    monkeypatch.setattr(experiment.Experiment, "evaluate", original)
    summary = resume_run(tmp_path / "cut")
    assert summary.trials == 10
    full, cut = _sequence(tmp_path / "full"), _sequence(tmp_path / "cut")
    assert cut == full  # same architectures, same order, nothing lost or repeated
    assert TrialStore.open(tmp_path / "cut").trial(5).attempt == 1


def test_export_files(tmp_path, plugins, toy_config):
    toy_config["constraints"] = ["toy_cost <= 12"]
    _run(toy_config, tmp_path / "r")
    paths = export_run(tmp_path / "r")
    import csv

    rows = list(csv.DictReader(paths["trials.csv"].open()))
    assert len(rows) == 8 and {"is_pareto", "rank", "toy_cost", "toy_quality.provenance"} <= set(rows[0])
    doc = json.loads(paths["pareto.json"].read_text())
    front_ids = {m["id"] for m in doc["front"]}
    assert front_ids == {r["id"] for r in rows if r["is_pareto"] == "1"}
    assert all(m["values"]["toy_quality"]["provenance"]["kind"] == "proxy" for m in doc["front"])
    assert {p.stem for p in paths["front"].glob("*.yaml")} == front_ids
    assert paths["pareto.png"].stat().st_size > 10_000 and paths["hypervolume.png"].stat().st_size > 5_000
    assert doc["hypervolume"] > 0 and not math.isnan(doc["hypervolume"])
