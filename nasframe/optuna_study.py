"""A run as an Optuna study: ``nasframe export RUN --optuna URL`` and ``nasframe dashboard RUN``.

Every trial of the run becomes a trial of the study, numbered in run order:

* state: ``complete`` with every objective value -> COMPLETE (values in the experiment's
  objective order, directions ``minimize``/``maximize``, names via ``set_metric_names``);
  a complete trial missing a value (objectives skipped after a broken constraint) and
  ``infeasible`` -> COMPLETE with its constraints (PRUNED when values are missing);
  ``pruned`` (stopped early) -> PRUNED; ``failed`` -> FAIL; ``running`` -> RUNNING;
* params: the architecture's decisions, with the space's distributions (``Integer`` ->
  ``IntDistribution``, ``Categorical``/``Boolean`` -> ``CategoricalDistribution`` of
  the values, or of their ``repr`` when a value is not a JSON scalar); when the run's
  space cannot be made here (its plugin is missing) the distributions are the values seen;
* constraints: one number per experiment constraint (``value - bound`` for ``<=``,
  ``bound - value`` for ``>=``; feasible when <= 0), written as the trial system attr
  ``constraints`` (a list): the form optuna-dashboard 0.21 reads (it ignores 5.0's named
  constraints) and Optuna 5 reads too (named "0", "1", ...). The study user attr
  ``constraints`` names them;
* user attrs: ``nasframe_number``, ``arch_id``, ``origin``, ``status``, ``feasible``,
  ``violation``, ``seed``, ``attempt``, ``failure``, ``error`` (first line) and
  ``provenance.<key>`` (``kind:backend@device``) for every value;
* start and end times are the trial's.

The study's user attrs: the run directory, experiment name, space, strategy, objectives
(with direction) and the nasframe version.
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from nasframe.errors import ConfigError
from nasframe.results import Run, load_run
from nasframe.trial import Constraint, Trial

INSTALL_HINT = "pip install 'nasframe[dashboard]'"
_SCALARS = (bool, int, float, str, type(None))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"writing an Optuna study needs optuna >= 5.0: {INSTALL_HINT}") from None
    if int(optuna.__version__.split(".")[0]) < 5:
        raise ConfigError(f"writing an Optuna study needs optuna >= 5.0, {optuna.__version__} is "
                          f"installed: pip install -U 'nasframe[dashboard]'")
    return optuna


def _label(value: Any) -> Any:
    return value if isinstance(value, _SCALARS) else repr(value)


def _distributions(run: Run) -> dict[str, Any]:
    """Each decision's Optuna distribution (from the space when it can be made here)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from nasframe.space import Integer

    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decisions = list(run.experiment().space.decisions())
    except Exception:  # noqa: BLE001 - the run's plugins are missing here: use the values seen
        decisions = None
    if decisions is not None:
        out = {}
        for d in decisions:
            if isinstance(d, Integer):
                out[d.name] = IntDistribution(d.low, d.high, step=d.step)
            else:
                out[d.name] = CategoricalDistribution(tuple(_label(v) for v in d.values()))
        return out
    seen: dict[str, dict[str, Any]] = {}
    for t in run.trial_list():
        for name, v in t.arch.to_dict().items():
            v = _label(v)
            seen.setdefault(name, {})[repr(v)] = v
    return {name: CategoricalDistribution(tuple(sorted(vals.values(), key=repr)))
            for name, vals in seen.items()}


def _fits(dist: Any, value: Any) -> bool:
    from optuna.distributions import IntDistribution

    if isinstance(dist, IntDistribution):
        return (isinstance(value, int) and not isinstance(value, bool)
                and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0)
    return any(type(c) is type(value) and c == value for c in dist.choices)


def _signed(c: Constraint, t: Trial) -> float:
    v = t.values.get(c.key)
    if v is not None and math.isfinite(v):
        return float(v - c.bound) if c.op == "<=" else float(c.bound - v)
    return 1.0 if t.feasible is False else 0.0   # missing: broken (how far unknown) or unknown


def _time(ts: float | None) -> datetime.datetime | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts)


def frozen_trials(run: Run) -> list[Any]:
    """The run's trials as Optuna ``FrozenTrial`` objects (see the module doc)."""
    _optuna()
    from optuna.trial import FrozenTrial, TrialState

    keys = run.keys
    constraints = run.config.parsed_constraints
    dists = _distributions(run)
    out = []
    for number, t in enumerate(run.trial_list()):
        values = [t.values.get(k) for k in keys]
        complete = t.status in ("complete", "infeasible") and all(
            v is not None and math.isfinite(v) for v in values)
        state = {"complete": TrialState.COMPLETE if complete else TrialState.PRUNED,
                 "infeasible": TrialState.COMPLETE if complete else TrialState.PRUNED,
                 "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
                 "running": TrialState.RUNNING}[t.status]
        params, used = {}, {}
        for name, value in t.arch.to_dict().items():
            dist = dists.get(name)
            label = _label(value)
            if dist is None or not _fits(dist, label):
                continue          # not a decision of the space (an old run's extra key)
            params[name], used[name] = label, dist
        user = {"nasframe_number": t.number, "arch_id": t.arch.id, "origin": t.origin,
                "status": t.status, "feasible": t.feasible,
                "violation": t.violation if math.isfinite(t.violation) else None,
                "seed": t.seed, "attempt": t.attempt}
        if t.failure:
            user["failure"] = t.failure
        if t.error:
            user["error"] = t.error.splitlines()[0][:500]
        for k, prov in t.provenance.items():
            user[f"provenance.{k}"] = prov.short()
        extra = {k: float(v) for k, v in t.values.items()
                 if k not in keys and v is not None and math.isfinite(v)}
        for k, v in extra.items():             # constraint-only values
            user[f"value.{k}"] = v
        system = {}
        if constraints and t.status in ("complete", "infeasible", "pruned"):
            system["constraints"] = [_signed(c, t) for c in constraints]
        start = _time(t.started)
        end = _time(t.finished) if t.status != "running" else None
        out.append(FrozenTrial(
            number=number, state=state, value=None,
            datetime_start=start or (end if state != TrialState.RUNNING else None)
            or datetime.datetime.now(), datetime_complete=end if state.is_finished() else None,
            params=params, distributions=used, user_attrs=user, system_attrs=system,
            intermediate_values={}, trial_id=number,
            values=[float(v) for v in values] if state == TrialState.COMPLETE else None))
    return out


def write_study(run_dir: str | Path, storage: Any, study_name: str | None = None,
                overwrite: bool = False):
    """Write the run in ``run_dir`` as a study in ``storage`` (an Optuna storage URL such as
    ``sqlite:///path.db``, or a storage object); returns the study.

    ``study_name`` defaults to the experiment's name. An existing study of that name is
    an error unless ``overwrite`` (then it is replaced)."""
    optuna = _optuna()
    import nasframe

    run = load_run(run_dir)
    name = study_name or run.config.name
    if isinstance(storage, str):
        if storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///"):]).expanduser().resolve().parent.mkdir(
                parents=True, exist_ok=True)
        try:
            storage = optuna.storages.get_storage(storage)
        except Exception as err:  # noqa: BLE001 - a bad URL or a missing driver
            raise ConfigError(f"--optuna: cannot open the Optuna storage {storage!r} "
                              f"({type(err).__name__}: {err}); give a URL such as "
                              "sqlite:///study.db") from None
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
    if name in names:
        if not overwrite:
            raise ConfigError(f"the Optuna storage already has a study named {name!r}; pass "
                              "--study-name OTHER, or --overwrite to replace it")
        optuna.delete_study(study_name=name, storage=storage)
    trials = frozen_trials(run)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=["minimize" if d == "min" else "maximize"
                                            for d in run.directions])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(run.keys))
    cfg = run.config
    attrs = {"nasframe_run": str(Path(run_dir).resolve()), "experiment": cfg.name,
             "search_space": cfg.search_space.name, "strategy": cfg.strategy.name,
             "objectives": [f"{k} ({d})" for k, d in zip(run.keys, run.directions)],
             "constraints": [str(c) for c in cfg.parsed_constraints],
             "nasframe_version": getattr(nasframe, "__version__", "unknown")}
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    study.add_trials(trials)
    return study


def serve_dashboard(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080,
                    echo=print) -> None:
    """Serve the run in optuna-dashboard (a snapshot in memory; blocks until stopped)."""
    _optuna()
    import optuna

    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError(f"`nasframe dashboard` needs optuna-dashboard: {INSTALL_HINT}") from None
    storage = optuna.storages.InMemoryStorage()
    study = write_study(run_dir, storage)
    echo(f"{len(study.trials)} trials of {run_dir} as study {study.study_name!r} (a snapshot: "
         "restart to see newer trials)")
    echo(f"dashboard: http://{host}:{port}/dashboard/studies/{study._study_id}/trials "
         "(Ctrl-C stops it)")
    optuna_dashboard.run_server(storage, host=host, port=port)
