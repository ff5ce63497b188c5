"""Multi-fidelity pruning through the real runner: objectives report intermediate values,
Optuna's pruners stop trials, pruned trials keep their last value, are off the front and
survive a resume; `no_worse_on` protects cheap models; bad pruner settings are exit 2."""
from __future__ import annotations

import pytest

import nasframe
from nasframe.errors import ConfigError
from nasframe.testing import ToySpace

pytest.importorskip("optuna")

STEPS = 10


def _curve(arch, step: int) -> float:
    """A learning curve whose ceiling grows with width x depth (bigger = better)."""
    ceiling = arch["width"] * arch["depth"] / 24.0
    return ceiling * (1 - 0.5 ** (step / 2))


@nasframe.register
class PruneSpace(ToySpace):
    """The toy space under a name of this module's own (sent by value to process workers)."""

    name = "prune_toy"


@nasframe.objective(direction="max", kind="measured", reports_intermediate=True)
def curve_quality(candidate):
    """Quality after STEPS steps, reported every step (a pruner may stop it)."""
    value = 0.0
    for step in range(1, STEPS + 1):
        value = _curve(candidate.arch, step)
        candidate.report(value, step)
        if candidate.should_prune():
            raise nasframe.TrialPruned()
    return value


@nasframe.objective(direction="min")
def curve_cost(candidate):
    """A cost that grows with width x depth (so small models trade quality for cost)."""
    return float(candidate.arch["width"] * candidate.arch["depth"])


def _config(pruner=None, executor="inline", trials=16, **over):
    doc = {"name": "prune", "seed": 3,
           "search_space": {"name": "prune_toy", "params": {"widths": [1, 2, 4, 8], "max_depth": 3}},
           "objectives": [{"name": "curve_cost"}, {"name": "curve_quality"}],
           "strategy": {"name": "random"}, "budget": {"trials": trials},
           "references": False, "executor": {"name": executor}}
    if pruner is not None:
        doc["pruner"] = pruner
    doc.update(over)
    return doc


def _steps(run) -> int:
    return sum(int((t.intermediate or {}).get("steps", 0)) for t in run.trial_list())


def test_a_median_pruner_stops_trials_that_keep_their_last_value_and_leave_the_front(
        tmp_path, plugins):
    base = nasframe.Experiment.from_dict(_config()).run(out=tmp_path / "none", quiet=True,
                                                         export=False)
    pruned_run = nasframe.Experiment.from_dict(_config(
        {"name": "median", "params": {"n_startup_trials": 3, "n_warmup_steps": 2}})).run(
        out=tmp_path / "median", quiet=True, export=False)
    base_trials, trials = base.trial_list(), pruned_run.trial_list()
    # random search proposes the same architectures in the same order either way
    assert [t.arch.id for t in trials] == [t.arch.id for t in base_trials]
    assert all(t.status == "complete" for t in base_trials)
    pruned = [t for t in trials if t.status == "pruned"]
    assert pruned, "no trial was pruned"
    assert _steps(pruned_run) < _steps(base)
    for t in pruned:
        step = int(t.intermediate["steps"])
        assert 2 <= step < STEPS                   # not before the warm-up (2 steps), before the end
        assert t.values["curve_quality"] == pytest.approx(_curve(t.arch, step))
        assert t.provenance["curve_quality"].details["pruned_at_step"] == step
        assert t.error.startswith("pruned by 'median' at step")
        assert t.failure is None
    df = pruned_run.trials()
    assert not df.loc[df["status"] == "pruned", "is_pareto"].astype(bool).any()
    front_ids = set(pruned_run.front()["id"])
    assert front_ids and not front_ids & {t.arch.id for t in pruned}
    # what a pruned trial stopped at is worse than the median of the others at that step
    for t in pruned[:3]:
        step = int(t.intermediate["steps"])
        earlier = [o for o in trials if o.number < t.number and o.intermediate]
        at = sorted(float(o.intermediate["values"][str(step)]) for o in earlier
                    if str(step) in o.intermediate["values"])
        assert at and t.values["curve_quality"] < at[len(at) // 2] + 1e-12


def test_no_worse_on_keeps_cheap_models_that_a_global_median_would_stop(tmp_path, plugins):
    median = {"n_startup_trials": 3, "n_warmup_steps": 2}
    every = nasframe.Experiment.from_dict(_config({"name": "median", "params": median})).run(
        out=tmp_path / "global", quiet=True, export=False)
    within = nasframe.Experiment.from_dict(_config(
        {"name": "median", "params": {**median, "no_worse_on": ["curve_cost"]}})).run(
        out=tmp_path / "within", quiet=True, export=False)
    stopped = {t.arch.id for t in every.trial_list() if t.status == "pruned"}
    kept = {t.arch.id for t in within.trial_list() if t.status == "pruned"}
    assert kept < stopped            # comparing only with as-cheap trials stops fewer
    # the cheapest architecture tried is never stopped when compared with as-cheap ones
    cheapest = min(within.trial_list(), key=lambda t: t.values["curve_cost"])
    assert cheapest.status == "complete"


def test_pruning_on_the_process_executor_and_a_resume(tmp_path, plugins):
    cfg = _config({"name": "median", "params": {"n_startup_trials": 3, "n_warmup_steps": 2}},
                  executor="process", trials=10)
    cfg["executor"]["workers"] = 2
    run = nasframe.Experiment.from_dict(cfg).run(out=tmp_path / "run", n_trials=6, quiet=True,
                                                 export=False)
    assert len(run.trial_list()) == 6
    run = nasframe.load_run(tmp_path / "run").resume(quiet=True, export=True)
    trials = run.trial_list()
    assert len(trials) == 10 and {t.status for t in trials} <= {"complete", "pruned"}
    assert any(t.status == "pruned" for t in trials)
    assert all(t.intermediate and t.intermediate["pruner"] == "median" for t in trials)
    assert (tmp_path / "run" / "trials.csv").is_file()          # resume(export=True) exported


@pytest.mark.parametrize("pruner, words", [
    ({"name": "medain"}, "pruner.name: unknown pruner 'medain'"),
    ({"name": "median", "params": {"n_startup": 3}}, "pruner.params.n_startup: MedianPruner has "
                                                     "no parameter 'n_startup'"),
    ({"name": "median", "params": {"no_worse_on": ["cost"]}}, "pruner.params.no_worse_on: "
                                                             "'cost' is not an objective"),
])
def test_bad_pruner_settings_name_the_field(pruner, words, plugins):
    with pytest.raises(ConfigError) as err:
        nasframe.Experiment.from_dict(_config(pruner))
    assert words in str(err.value)


def test_a_pruner_without_a_reporting_objective_is_refused(plugins):
    cfg = _config({"name": "median"})
    cfg["objectives"] = [{"name": "curve_cost"}]
    with pytest.raises(ConfigError, match="no objective of this experiment reports "
                                          "intermediate values"):
        nasframe.Experiment.from_dict(cfg)


def test_the_objective_decorator_refuses_an_unknown_kind_or_direction_at_once():
    with pytest.raises(ValueError, match="kind is 'proxy' .* or 'measured'"):
        nasframe.objective(kind="measurement")
    with pytest.raises(ValueError, match="direction is 'min' or 'max'"):
        nasframe.objective(direction="maximize")
