"""A run as an Optuna study: ``nasframe export RUN --optuna URL`` and ``nasframe dashboard RUN``.

Every trial of the run becomes a trial of the study, numbered in run order:

* state (:data:`STATUS_MAP`): ``complete`` with every objective value -> COMPLETE (values
  in the experiment's objective order, directions ``minimize``/``maximize``, names via
  ``set_metric_names``); ``infeasible`` -> COMPLETE with its constraints (PRUNED when
  objectives were skipped after the broken constraint); ``pruned`` (stopped early by a
  pruner) -> PRUNED with its intermediate values; ``failed`` -> FAIL; ``running`` -> RUNNING;
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
  ``violation``, ``seed``, ``attempt``, ``front`` (on the run's Pareto front), ``pick``
  (the strategy's pick), ``rank``, ``failure``, ``error`` (first line) and
  ``provenance.<key>`` (``kind:backend@device``) for every value;
* start and end times are the trial's.

The study's user attrs: the pick and the front by trial number and architecture id, the
run directory, experiment name, space, strategy, objectives (with direction),
constraints and the nasframe version.

``nasframe dashboard`` serves :func:`live_storage`: a read-only Optuna storage that
reads the run again whenever its store changed, so a running search's new trials appear
in optuna-dashboard; the study's note (optuna-dashboard's "Note" page) names the pick and
the front.
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import threading
import time
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


#: Each nasframe trial status as (Optuna state, whether the trial's constraint values are
#: known). The one place a status is mapped: a new or renamed status is one line here.
#: A trial of a mapped COMPLETE status that misses an objective value becomes PRUNED
#: (Optuna's COMPLETE needs every value); an unknown status becomes FAIL.
STATUS_MAP: dict[str, tuple[str, bool]] = {
    "complete": ("COMPLETE", True),
    "infeasible": ("COMPLETE", True),  # a broken constraint: PRUNED when values are missing
    "pruned": ("PRUNED", True),        # stopped early by a pruner (its last reported value)
    "failed": ("FAIL", False),
    "running": ("RUNNING", False),
}


def _state(t: Trial, values: list[float | None]):
    from optuna.trial import TrialState

    name, _ = STATUS_MAP.get(t.status, ("FAIL", False))
    if name == "COMPLETE" and not all(v is not None and math.isfinite(v) for v in values):
        name = "PRUNED"
    return TrialState[name]


class Marks:
    """The run's front and pick, by trial: what the study shows beside the values."""

    def __init__(self, run: Run):
        import warnings

        a = run.analysis
        self.front = {t.number for t, on in zip(a.trials, a.pareto) if on}
        self.ranks = {t.number: int(r) for t, r in zip(a.trials, a.ranks)}
        self.pick_note = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pick = run.pick_result
        self.pick = pick
        if pick is None:
            self.pick_note = (str(caught[0].message) if caught else
                              "the run's strategy has no pick rule, or nothing to pick yet")


def frozen_trials(run: Run, marks: Marks | None = None) -> list[Any]:
    """The run's trials as Optuna ``FrozenTrial`` objects (see the module doc)."""
    _optuna()
    from optuna.trial import FrozenTrial, TrialState

    marks = marks or Marks(run)
    keys = run.keys
    constraints = run.config.parsed_constraints
    dists = _distributions(run)
    pick = marks.pick.trial.number if marks.pick is not None else None
    out = []
    for number, t in enumerate(run.trial_list()):
        values = [t.values.get(k) for k in keys]
        state = _state(t, values)
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
                "seed": t.seed, "attempt": t.attempt,
                "front": t.number in marks.front, "pick": t.number == pick}
        if marks.ranks.get(t.number, -1) >= 0:
            user["rank"] = marks.ranks[t.number]
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
        if constraints and STATUS_MAP.get(t.status, ("", False))[1]:
            system["constraints"] = [_signed(c, t) for c in constraints]
        start = _time(t.started)
        end = _time(t.finished) if state != TrialState.RUNNING else None
        out.append(FrozenTrial(
            number=number, state=state, value=None,
            datetime_start=start or (end if state != TrialState.RUNNING else None)
            or datetime.datetime.now(), datetime_complete=end if state.is_finished() else None,
            params=params, distributions=used, user_attrs=user, system_attrs=system,
            intermediate_values={int(k): float(v) for k, v in
                                 (t.intermediate or {}).get("values", {}).items()},
            trial_id=number,
            values=[float(v) for v in values] if state == TrialState.COMPLETE else None))
    return out


def _open_storage(storage: Any):
    optuna = _optuna()
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
    return storage


def _label_trial(number: int, t: Trial) -> str:
    return f"trial {number} ({t.arch.id})"


def _fill_study(run: Run, storage: Any, name: str):
    """Create study ``name`` in ``storage`` holding the run's trials; returns (study, marks)."""
    import warnings

    import nasframe

    optuna = _optuna()
    marks = Marks(run)
    trials = frozen_trials(run, marks)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=["minimize" if d == "min" else "maximize"
                                            for d in run.directions])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(run.keys))
    cfg = run.config
    dashboard_number = {t.number: i for i, t in enumerate(run.trial_list())}
    by_number = {t.number: t for t in run.trial_list()}
    pick = marks.pick
    attrs = {   # the pick and the front first: optuna-dashboard shows 5 rows to a page
        "pick": (f"{_label_trial(dashboard_number[pick.trial.number], pick.trial)}: "
                 f"{pick.rule}" if pick is not None else f"none ({marks.pick_note})"),
        "front": [_label_trial(dashboard_number[n], by_number[n]) for n in sorted(marks.front)],
        "nasframe_run": str(Path(run.run_dir).resolve()), "experiment": cfg.name,
        "search_space": cfg.search_space.name, "strategy": cfg.strategy.name,
        "objectives": [f"{k} ({d})" for k, d in zip(run.keys, run.directions)],
        "constraints": [str(c) for c in cfg.parsed_constraints],
        "nasframe_version": getattr(nasframe, "__version__", "unknown")}
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    study.add_trials(trials)
    return study, marks


def write_study(run_dir: str | Path, storage: Any, study_name: str | None = None,
                overwrite: bool = False):
    """Write the run in ``run_dir`` as a study in ``storage`` (an Optuna storage URL such as
    ``sqlite:///path.db``, or a storage object); returns the study.

    ``study_name`` defaults to the experiment's name. An existing study of that name is
    an error unless ``overwrite`` (then it is replaced)."""
    optuna = _optuna()
    run = load_run(run_dir)
    name = study_name or run.config.name
    storage = _open_storage(storage)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
    if name in names:
        if not overwrite:
            raise ConfigError(f"the Optuna storage already has a study named {name!r}; pass "
                              "--study-name OTHER, or --overwrite to replace it")
        optuna.delete_study(study_name=name, storage=storage)
    return _fill_study(run, storage, name)[0]


# ------------------------------------------------------------------ the live dashboard
def _note(run: Run, marks: Marks) -> str:
    """The study note optuna-dashboard shows on the study's page: the pick and the front."""
    trials = run.trial_list()
    number = {t.number: i for i, t in enumerate(trials)}
    by_number = {t.number: t for t in trials}
    running = sum(t.status == "running" for t in trials)
    lines = [f"**nasframe run** `{run.run_dir}`: {len(trials)} trials"
             + (f" ({running} running)" if running else "") +
             f", read {datetime.datetime.now():%H:%M:%S} (the page follows the run: "
             "new trials appear as it writes them).", ""]
    if marks.pick is not None:
        t = marks.pick.trial
        lines.append(f"**Pick**: trial {number[t.number]}, arch `{t.arch.id}` "
                     f"({marks.pick.rule})")
    else:
        lines.append(f"**Pick**: none ({marks.pick_note})")
    lines.append("")
    front = sorted(marks.front)
    lines.append(f"**Front** ({len(front)} trials, user attr `front`): " + (", ".join(
        f"trial {number[n]} `{by_number[n].arch.id}`" for n in front) or "none yet"))
    return "\n".join(lines)


def live_storage(run_dir: str | Path, refresh: float = 2.0, note: Any = None,
                 refuse: Any = PermissionError, warn: Any = None):
    """A read-only Optuna storage that shows the run in ``run_dir`` as it is now.

    Each read sees the run's store: when ``trials.db`` changed since the last read (and
    at most every ``refresh`` seconds), the run is read again (read-only) into a fresh
    in-memory study, which answers the reads; trial ids and numbers stay those of the
    run's order. The run's files are never written: every write (a note or a trial
    edited in the dashboard) raises ``refuse(message)`` (a ``PermissionError`` by default).
    ``note``: a function ``(study, text)`` that writes the study note (optuna-dashboard's
    ``save_note``). ``warn(text)`` is told once when a read fails (the page keeps the
    last good read) and once when reading works again."""
    _optuna()
    return _live_storage_class()(Path(run_dir), refresh, note, refuse, warn)


@functools.cache
def _live_storage_class():
    from optuna.storages import BaseStorage, InMemoryStorage

    class LiveRunStorage(BaseStorage):
        __doc__ = live_storage.__doc__

        def __init__(self, run_dir: Path, refresh: float, note: Any, refuse: Any,
                     warn: Any = None) -> None:
            self.run_dir, self.refresh, self._write_note = run_dir, refresh, note
            self._warn = warn
            self._refusal = refuse
            self._lock = threading.Lock()
            self._read_at = -math.inf
            self._signature: Any = None
            self.error: str | None = None       # the last read's failure (the last good stays)
            self.trial_count = 0
            self._inner = self._build()

        def _files(self) -> Any:
            sig = []
            for suffix in ("", "-wal"):
                try:
                    st = os.stat(f"{self.run_dir / 'trials.db'}{suffix}")
                    sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
                except OSError:
                    sig.append(None)
            return tuple(sig)

        def _build(self) -> Any:
            signature = self._files()
            run = load_run(self.run_dir)
            inner = InMemoryStorage()
            study, marks = _fill_study(run, inner, run.config.name)
            if self._write_note is not None:
                self._write_note(study, _note(run, marks))
            self._signature = signature
            self.trial_count = len(run.trial_list())
            return inner

        def current(self) -> Any:
            """The in-memory study of the run as last read (read again if it changed)."""
            with self._lock:
                now = time.monotonic()
                if now - self._read_at >= self.refresh:
                    self._read_at = now
                    if self._files() != self._signature:
                        try:
                            self._inner = self._build()
                            if self.error is not None and self._warn is not None:
                                self._warn(f"dashboard: {self.run_dir} read again "
                                           f"({self.trial_count} trials)")
                            self.error = None
                        except Exception as err:  # noqa: BLE001 - keep showing the last read
                            error = f"{type(err).__name__}: {err}"
                            if error != self.error and self._warn is not None:
                                self._warn(f"dashboard: cannot read {self.run_dir} again "
                                           f"({error}); the page shows the last read, "
                                           f"{self.trial_count} trials")
                            self.error = error
                return self._inner

        def _refuse(self, *args: Any, **kwargs: Any) -> Any:
            raise self._refusal(f"nasframe dashboard shows {self.run_dir} read-only and never "
                                  "writes the run; `nasframe export RUN --optuna URL` writes a "
                                  "copy you can edit")

        create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
        create_new_trial = set_trial_param = set_trial_state_values = _refuse
        set_trial_intermediate_value = set_trial_user_attr = set_trial_system_attr = _refuse

        def get_study_id_from_name(self, study_name):
            return self.current().get_study_id_from_name(study_name)

        def get_study_name_from_id(self, study_id):
            return self.current().get_study_name_from_id(study_id)

        def get_study_directions(self, study_id):
            return self.current().get_study_directions(study_id)

        def get_study_user_attrs(self, study_id):
            return self.current().get_study_user_attrs(study_id)

        def get_study_system_attrs(self, study_id):
            return self.current().get_study_system_attrs(study_id)

        def get_all_studies(self):
            return self.current().get_all_studies()

        def get_trial_id_from_study_id_trial_number(self, study_id, trial_number):
            return self.current().get_trial_id_from_study_id_trial_number(study_id, trial_number)

        def get_trial(self, trial_id):
            return self.current().get_trial(trial_id)

        def get_all_trials(self, study_id, deepcopy=True, states=None):
            return self.current().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    return LiveRunStorage


def _server(host: str, port: int, verbose: bool):
    """A threaded WSGI server bound to (host, port), its app set later; it logs each
    request only when ``verbose``. A port in use is a ConfigError (nothing printed yet)."""
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Handler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
            if verbose:
                super().log_message(format, *args)

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return Server((host, port), Handler)
    except OSError as err:
        import errno

        what = err.strerror or str(err)
        if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host}: cannot listen on {host}:{port} ({what}); give "
                              "an address of this machine, e.g. 127.0.0.1") from None
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({what}); pass "
                          "another --port, or --port 0 for a free one") from None


def serve_dashboard(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080,
                    echo=print, verbose: bool = False, refresh: float = 2.0,
                    ready=None) -> None:
    """Serve the run in optuna-dashboard, live: the study is the run's store as it is now
    (read again when it changed, at most every ``refresh`` s), so a running search's new
    trials appear in the page. The port is taken before its URL is printed (``port=0``:
    a free one). Blocks until Ctrl-C; ``ready(server)`` is called once it serves."""
    import importlib.util

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a port; give 1..65535, or 0 for a free one")
    if not refresh >= 0:
        raise ConfigError(f"--refresh {refresh}: give a number of seconds >= 0, e.g. 2")
    _optuna()
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise ConfigError(f"`nasframe dashboard` needs optuna-dashboard: {INSTALL_HINT}")
    load_run(run_dir)                           # a bad run directory: its error first
    server = _server(host, port, verbose)
    try:
        import bottle
        import optuna_dashboard

        storage = live_storage(run_dir, refresh=refresh, note=optuna_dashboard.save_note,
                               refuse=lambda message: bottle.HTTPError(403, message),
                               warn=echo)
        server.set_app(optuna_dashboard.wsgi(storage))
        study = storage.get_all_studies()[0]
        shown = "localhost" if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        echo(f"{storage.trial_count} trials of {run_dir} as study {study.study_name!r} (live: "
             f"new trials appear as the run writes them)")
        echo(f"dashboard: http://{shown}:{server.server_port}/dashboard/studies/"
             f"{study._study_id} (Ctrl-C stops it)")
        if ready is not None:
            ready(server)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
    finally:
        server.server_close()
