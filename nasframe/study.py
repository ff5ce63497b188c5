"""A run you drive yourself, Optuna style: ``ask``, ``tell``, ``enqueue``, ``optimize``.

::

    exp = nasframe.Experiment.from_yaml("examples/quickstart.yaml")
    with exp.study(out="runs/mine", load_if_exists=True) as study:
        study.enqueue({"depth": 2, "width": 16, ...})       # evaluated first
        trial = study.ask()                                   # the strategy's next proposal
        study.tell(trial, {"gmacs": 0.12, "quick_psnr": 27.3}) # values you computed
        t = study.ask(); study.evaluate(t)                    # or the experiment's objectives
        study.optimize(n_trials=20, timeout=600, callbacks=[print_best])
        study.best_trials                                     # the Pareto front

Everything goes through the same runner as ``nasframe run``: the same store,
the strategy's state, provenance, constraints, resume. A trial asked and never
told is ``interrupted`` when the study closes and runs again (through the
experiment's objectives) on resume, as a trial of a stopped run does.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nasframe.architecture import Architecture
from nasframe.errors import ConfigError
from nasframe.objective import Provenance
from nasframe.trial import Trial

if TYPE_CHECKING:
    import pandas as pd

    from nasframe.runner import Runner, RunSummary


class StopStudy(Exception):  # noqa: N818 - reads as what it does
    """Raise from a callback to end ``optimize`` after the trials in flight (or call
    ``study.stop()``)."""


@dataclass(frozen=True)
class AskedTrial:
    """A trial handed out by :meth:`Study.ask`: tell its values with :meth:`Study.tell`."""

    number: int
    arch: Architecture
    seed: int
    origin: str

    @property
    def params(self) -> dict[str, Any]:
        """The architecture's decisions (Optuna's ``trial.params``)."""
        return self.arch.to_dict()


class Study:
    """An open run: the run directory is locked until :meth:`close` (or the ``with`` block
    ends). Made by :meth:`nasframe.Experiment.study` or :meth:`nasframe.Run.study`."""

    def __init__(self, runner: Runner):
        self._runner = runner
        self._open: dict[int, Trial] = {}

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the run: trials asked and not told are marked ``interrupted`` (they run
        again on resume), the executor stops, the store closes."""
        r = self._runner
        if getattr(r, "_closed", False):
            return
        if self._open and r.store.lost is None:
            r.store.mark(list(self._open), "interrupted")
        r.close()

    def __del__(self) -> None:  # a study dropped without close() still releases its run
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def run_dir(self):
        return self._runner.run_dir

    @property
    def experiment(self):
        return self._runner.exp

    def _check_open(self) -> None:
        if getattr(self._runner, "_closed", False):
            raise ConfigError(f"the study of {self.run_dir} is closed; open it again with "
                              f"nasframe.load_run({str(self.run_dir)!r}).study()")

    # -- ask / tell --------------------------------------------------------------
    def ask(self) -> AskedTrial:
        """The next architecture to evaluate: an enqueued one first, else the strategy's
        proposal (never one the run has evaluated). Raises ``StopIteration`` when the
        strategy has nothing left to propose."""
        from nasframe.experiment import trial_seed

        self._check_open()
        r = self._runner
        queued = r._dequeue(1)
        origin = "enqueued"
        arch = queued[0] if queued else None
        if arch is None:
            origin = "asked"
            for _ in range(1000):
                proposed = r.strategy.ask(1)
                if not proposed:
                    raise StopIteration("the strategy has nothing left to propose (the space "
                                        "is exhausted)")
                new, dup = r._split_duplicates(proposed)
                if dup:
                    r.strategy.tell(dup)
                if new and new[0].id not in {t.arch.id for t in self._open.values()}:
                    arch = new[0]
                    break
            else:
                raise StopIteration("the strategy proposed only evaluated architectures 1000 "
                                    "times in a row")
        t = Trial(r.store.next_number(), arch, "running", seed=trial_seed(r.cfg.seed, arch),
                  origin=origin, started=time.time())
        r.history.record([t])
        r.store.start([t], r._state())
        r.asked.add(t.number)
        self._open[t.number] = t
        return AskedTrial(t.number, arch, t.seed, origin)

    def tell(self, trial: AskedTrial | int, values: Mapping[str, float] | None = None, *,
             state: str = "complete", error: str | None = None,
             provenance: Mapping[str, Provenance | str] | None = None) -> Trial:
        """Finish an asked trial with the values you computed (one per objective of the
        experiment, by key; constraint-only keys too). ``state``: ``complete``, ``failed``
        (with ``error``) or ``pruned``. Each value's provenance is the objective's kind with
        backend ``told`` unless ``provenance`` gives one (a Provenance, or ``"proxy"`` /
        ``"measured"``). Returns the stored trial (feasibility from the constraints)."""
        self._check_open()
        r = self._runner
        number, t = self._asked(trial)
        if state not in ("complete", "failed", "pruned"):
            raise ValueError(f"state {state!r}: use 'complete', 'failed' or 'pruned'")
        values = {k: float(v) for k, v in (values or {}).items()}
        keys = list(r.exp.objectives)
        unknown = [k for k in values if k not in keys]
        if unknown:
            raise ValueError(f"values for {unknown}: not objectives of this experiment "
                             f"({', '.join(keys)})")
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"values for {bad} are not finite numbers; tell state='failed' "
                             "with an error instead")
        missing = [s.key for s in r.exp.specs if s.key not in values]
        if state == "complete" and missing:
            raise ValueError(f"a complete trial needs a value for every objective; missing: "
                             f"{', '.join(missing)}")
        prov: dict[str, Provenance] = {}
        for k in values:
            given = (provenance or {}).get(k)
            obj = r.exp.objectives[k]
            if isinstance(given, Provenance):
                prov[k] = given
            else:
                prov[k] = Provenance(given or obj.kind, "told", "n/a",
                                     {"objective": obj.name})
        status = state
        if state == "complete" and any(c.violation(values.get(c.key)) > 0
                                       for c in r.exp.constraints if c.key in values):
            status = "infeasible" if len(values) < len(r.exp.objectives) else "complete"
        if state == "failed":
            done = r.exp.complete(t, "failed", {}, {}, error or "failed (told)", "exception")
        else:
            done = r.exp.complete(t, status, values, prov, error)
        self._open.pop(number)
        r.asked.discard(number)
        out = r._finish([done])
        return out[0]

    def _asked(self, trial: AskedTrial | int) -> tuple[int, Trial]:
        """The number and the open trial of an asked trial (ValueError if it is not open)."""
        number = trial if isinstance(trial, int) else trial.number
        t = self._open.get(number)
        if t is None:
            raise ValueError(f"trial {number} was not asked in this study, or was told already")
        return number, t

    def evaluate(self, trial: AskedTrial | int) -> Trial:
        """Evaluate an asked trial with the experiment's objectives (on its executor, as
        ``optimize`` does) and store it; returns the finished trial."""
        self._check_open()
        r = self._runner
        number, t = self._asked(trial)
        from nasframe import stopping

        with stopping.watch():
            executor = r.open_session()
            try:
                finished = r._run_trials(executor, [t])
            except BaseException:
                r.mark_inflight()
                raise
        self._open.pop(number)
        r.asked.discard(number)
        return r._finish(finished)[0]

    def enqueue(self, arch: Mapping[str, Any] | Architecture) -> Architecture:
        """Evaluate this architecture before the strategy's next proposals (Optuna's
        ``enqueue_trial``). It must be an architecture of the space (a ValueError says why
        not); it is canonicalised, stored with the run, and skipped if already evaluated."""
        self._check_open()
        space = self._runner.exp.space
        a = arch if isinstance(arch, Architecture) else Architecture(dict(arch))
        reason = space.validate(a)
        if reason is not None:
            raise ValueError(f"not an architecture of '{space.name}': {reason}")
        a = space.canonicalize(a)
        self._runner.enqueue(a)
        return a

    # -- the loop ----------------------------------------------------------------
    def optimize(self, n_trials: int | None = None, timeout: float | None = None,
                 callbacks: Iterable[Callable[[Study, Trial], Any]] = (), *,
                 quiet: bool | None = None) -> RunSummary:
        """Run the search: ``n_trials`` more search trials and/or for ``timeout`` seconds
        (either replaces the experiment's budget for this call; neither: the budget).
        Each ``callback(study, trial)`` runs after every finished trial; raising
        :class:`StopStudy` (or calling :meth:`stop`) ends the search after the trials in
        flight."""
        from nasframe import stopping
        from nasframe.errors import Terminated

        self._check_open()
        if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 0):
            raise ValueError(f"n_trials must be a whole number >= 0, got {n_trials!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        r = self._runner
        cbs = list(callbacks)

        def call(t: Trial) -> None:
            for cb in cbs:
                try:
                    cb(self, t)
                except StopStudy:
                    r.stop()

        r.limit_trials, r.limit_time = n_trials, timeout
        r.callbacks = [call] if cbs else []
        r.stop_requested = False
        if quiet is not None:
            r.quiet = quiet
        with stopping.watch():
            try:
                executor = r.open_session()
                return r._loop(executor)
            except (KeyboardInterrupt, Terminated):
                r.mark_inflight()
                raise
            finally:
                r.limit_trials = r.limit_time = None
                r.callbacks = []

    def stop(self) -> None:
        """End ``optimize`` after the trials in flight (from a callback)."""
        self._runner.stop()

    # -- results -------------------------------------------------------------------
    def _run(self):
        from nasframe.results import Run

        return Run(self.run_dir)

    @property
    def trials(self) -> list[Trial]:
        """Every trial so far, in number order (Optuna's ``study.trials``)."""
        return list(self._runner.history.trials())

    def trials_dataframe(self) -> pd.DataFrame:
        """Every trial as a DataFrame (the columns of :meth:`nasframe.Run.trials`)."""
        return self._run().trials()

    @property
    def best_trials(self) -> list[Trial]:
        """The Pareto-optimal trials (complete and feasible), Optuna's ``best_trials``."""
        from nasframe.analysis import analyse

        r = self._runner
        a = analyse(r.history.trials(), [s.key for s in r.exp.specs],
                    [s.direction for s in r.exp.specs], r.cfg.reference_point)
        return [t for t, on in zip(a.trials, a.pareto) if on]

    @property
    def best_trial(self) -> Trial:
        """The best trial of a single-objective experiment (a ValueError otherwise)."""
        if len(self._runner.exp.specs) != 1:
            raise ValueError("best_trial is for single-objective experiments; use best_trials "
                             "(the Pareto front)")
        best = self.best_trials
        if not best:
            raise ValueError("no complete, feasible trial yet")
        return best[0]
