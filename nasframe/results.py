"""A finished (or running) run, read from its directory: ``nasframe.load_run(dir)``.

::

    run = nasframe.load_run("runs/quickstart")
    run.trials()                 # every trial: a pandas DataFrame
    run.front()                  # the Pareto front (feasible, complete trials)
    run.pick()                   # the strategy's pick and its rule, or None

and, through :mod:`nasframe.api` (the top layer), ``run.export()`` and ``run.resume()``.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasframe.analysis import FrontAnalysis, Pick, analyse, find_pick
from nasframe.config import ExperimentConfig, config_from_dict
from nasframe.store import TrialStore
from nasframe.architecture import Architecture
from nasframe.trial import STATUSES, Trial

if TYPE_CHECKING:
    import pandas as pd

    from nasframe.experiment import Experiment



class Run:
    """The trials, front and pick of one run directory (read-only; the run may be live)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        store = TrialStore.open(self.run_dir, read_only=True)
        try:
            self.config_dict = store.config
            self._directions = store.get_meta("directions") or {}
            self._trials = store.trials()
        finally:
            store.close()

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, {len(self._trials)} trials)"

    # -- the Python API ------------------------------------------------------
    def trials(self, status: str | list[str] | None = None) -> pd.DataFrame:
        """Every trial as one row, in number order: ``number``, ``id``, ``origin``,
        ``status``, each objective's value and its provenance (``<key>.provenance``:
        proxy or measured, backend, device), ``feasible``, ``is_pareto``, ``rank``,
        ``pick``, timing, the first line of the error, and each decision as
        ``arch.<name>``. ``status`` keeps only trials with that status (or those)."""
        import pandas as pd

        rows = self.rows()
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            bad = [s for s in wanted if s not in STATUSES]
            if bad:
                raise ValueError(f"status {bad[0]!r}: not a trial status; use one of "
                                 f"{', '.join(STATUSES)}")
            rows = [r for r in rows if r["status"] in wanted]
        frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else _columns(self.keys))
        for col in ("started", "finished", "heartbeat"):   # local times, as Optuna shows them
            if col in frame:
                frame[col] = (pd.to_datetime(frame[col], unit="s", utc=True)
                              .dt.tz_convert(_local_zone()).dt.tz_localize(None))
        return frame.set_index("number", drop=False).rename_axis(None)

    def front(self) -> pd.DataFrame:
        """The Pareto-optimal trials (complete and feasible), best first on the first
        objective; the same columns as :meth:`trials`."""
        frame = self.trials()
        frame = frame[frame["is_pareto"].fillna(False).astype(bool)]
        if self.keys and len(frame):
            frame = frame.sort_values(self.keys[0], ascending=self.directions[0] == "min")
        return frame

    def pick(self) -> pd.Series | None:
        """The trial the strategy recommends, as a row of :meth:`trials` plus ``rule`` (why
        it was picked); None when the run has nothing to pick or no pick rule."""
        p = self.pick_result
        if p is None:
            return None
        row = self.trials().loc[p.trial.number].copy()
        row["rule"] = p.rule
        return row

    def architecture(self, number: int) -> Architecture:
        """The architecture of trial ``number`` (``space.build(arch)`` rebuilds the model)."""
        for t in self._trials:
            if t.number == number:
                return t.arch
        raise KeyError(f"trial {number}: not in {self.run_dir} (trials "
                       f"{self._trials[0].number}..{self._trials[-1].number})" if self._trials
                       else f"trial {number}: {self.run_dir} has no trials")

    @cached_property
    def config(self) -> ExperimentConfig:
        return config_from_dict(self.config_dict, f"{self.run_dir} (config snapshot)")

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.config.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction or self._directions.get(o.key, "min") for o in self.config.objectives]

    def trial_list(self) -> list[Trial]:
        """Every trial, in number order (running ones included)."""
        return list(self._trials)

    @cached_property
    def analysis(self) -> FrontAnalysis:
        return analyse(self._trials, self.keys, self.directions, self.config.reference_point)

    def experiment(self) -> Experiment:
        """The run's experiment, made from its config snapshot (not prepared)."""
        from nasframe.experiment import Experiment

        return Experiment.from_config(self.config, source=f"{self.run_dir} (config snapshot)")

    def rows(self) -> list[dict[str, Any]]:
        """Every trial as a flat record (see :func:`trial_row`), running ones included."""
        a = self.analysis
        where = {t.number: i for i, t in enumerate(a.trials)}
        pick = self.pick_result
        out = []
        for t in self._trials:
            i = where.get(t.number)
            out.append(trial_row(t, self.keys,
                                 None if i is None else bool(a.pareto[i]),
                                 None if i is None else int(a.ranks[i]),
                                 pick is not None and pick.trial.number == t.number))
        return out

    @cached_property
    def pick_result(self) -> Pick | None:
        """The strategy's pick (a fresh strategy from the config judges the finished trials)."""
        import warnings

        try:
            strategy = self.experiment().make_strategy()
        except Exception as err:  # noqa: BLE001 - a run without its plugins still reads
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            warnings.warn(f"no pick: the run's experiment cannot be made here ({first})",
                          RuntimeWarning, stacklevel=2)
            return None
        return find_pick(self.analysis, strategy)


def trial_row(t: Trial, keys: list[str], pareto: bool | None = None, rank: int | None = None,
              pick: bool = False) -> dict[str, Any]:
    """One trial as a flat record: number, id, origin, status, values, their provenance,
    feasibility, timing, error, and every decision as ``arch.<name>``."""
    row: dict[str, Any] = {
        "number": t.number, "id": t.arch.id, "origin": t.origin, "status": t.status,
        "failure": t.failure, "feasible": t.feasible, "violation": t.violation,
        "is_pareto": pareto, "rank": rank, "pick": pick}
    for k in keys:
        row[k] = t.values.get(k)
    for k in keys:
        prov = t.provenance.get(k)
        row[f"{k}.provenance"] = prov.short() if prov is not None else None
    row.update(duration_s=t.duration, attempt=t.attempt, seed=t.seed,
               error=(t.error or "").splitlines()[0] if t.error else None,
               started=t.started, finished=t.finished, heartbeat=t.heartbeat)
    for name, value in t.arch.to_dict().items():
        row[f"arch.{name}"] = value
    return row


def _columns(keys: list[str]) -> list[str]:
    """The columns of :meth:`Run.trials` for a run without trials yet."""
    return ["number", "id", "origin", "status", "failure", "feasible", "violation", "is_pareto",
            "rank", "pick", *keys, *(f"{k}.provenance" for k in keys), "duration_s", "attempt",
            "seed", "error", "started", "finished", "heartbeat"]


def _local_zone():
    import datetime

    return datetime.datetime.now().astimezone().tzinfo


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory written by ``nasframe run``."""
    return Run(run_dir)
