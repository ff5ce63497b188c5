"""What the ``nni`` and ``optuna`` strategies share: an external ask/tell optimiser over a
space's decisions, kept from spending the budget on invalid or already seen architectures,
and resumed by replaying the run into a fresh optimiser.

The optimiser works on decision *indices* (decision ``i`` takes value number ``x[i]``);
each proposal is canonicalised and validated with ``space.from_indices``:

* an invalid proposal is told back at once as an infeasible outcome with penalty values
  (the optimiser learns the region is bad), and the optimiser is asked again;
* a proposal whose canonical architecture the run has already seen (finished, running,
  or proposed in the same ``ask``) is told that architecture's result, the same model
  (once the result is known, when it is still running), and the optimiser is asked again;
* after ``max_asks`` such proposals in a row, an unseen valid architecture is drawn at
  random (``space.sample`` with the strategy's generator; the whole valid space when it
  is small) and handed to the optimiser as its own proposal where it can take one
  (Optuna's ``enqueue_trial``), as a known result otherwise (NNI's ``import_data``).

So ``ask`` returns only valid, unseen architectures, and returns fewer (none) only when
the space is exhausted. Penalties need a scale: the worst value told so far. Until a
first result is known, the outcomes that need a penalty wait (the optimiser sees them
as still running) and are told as soon as one arrives.

Neither library can save a sampler or tuner state to JSON, so the strategy state is the
sequence of calls: ``["a", n, next_trial_number]`` per ``ask`` and ``["t", [trial numbers]]``
per ``tell`` (a told trial that is not the history's record of that number is stored in
full). A resumed instance builds a fresh optimiser with the saved seed and replays the
sequence, reading the trials from the history (what was seen at each ``ask`` is the
history's trials numbered below the saved ``next_trial_number``), so it continues the
same search. Replay repeats every optimiser call of the run (milliseconds per call for
TPE, NSGA-II, Evolution; seconds per call for Optuna's GP sampler).
"""
from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasframe.architecture import Architecture
from nasframe.params import ParamError
from nasframe.strategy import Strategy
from nasframe.trial import Constraint, Problem, Trial

#: spaces with at most this many decision combinations are enumerated for the random fallback
ENUMERATE_LIMIT = 50_000
STATE_VERSION = 1


@dataclass(frozen=True)
class Outcome:
    """A result as the optimiser is told it.

    ``kind``: ``ok`` (evaluated: complete, infeasible or pruned, with the values it has), ``failed``
    (the evaluation failed) or ``invalid`` (not an architecture of the space).
    ``values``: the finite objective values, by key. ``constraints``: per experiment
    constraint, ``value - bound`` for ``<=`` and ``bound - value`` for ``>=`` (satisfied
    when <= 0), None when the value is missing. ``violation``: nasframe's total violation."""

    kind: str
    values: dict[str, float]
    constraints: tuple[float | None, ...]
    feasible: bool
    violation: float


def signed(c: Constraint, value: float | None) -> float | None:
    """A constraint as one number, satisfied when <= 0 (None: the value is missing)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value - c.bound) if c.op == "<=" else float(c.bound - value)


def outcome_of(problem: Problem, trial: Trial) -> Outcome:
    """The outcome of a finished trial."""
    if trial.status == "failed":
        kind = "invalid" if trial.failure == "invalid" else "failed"
        return Outcome(kind, {}, (None,) * len(problem.constraints), False, math.inf)
    keys = set(problem.keys)
    values = {k: float(v) for k, v in trial.values.items()
              if k in keys and v is not None and math.isfinite(v)}
    cons = tuple(signed(c, trial.values.get(c.key)) for c in problem.constraints)
    feasible = trial.feasible is not False and all(c is None or c <= 0 for c in cons)
    violation = float(trial.violation) if trial.feasible is False else \
        float(sum(max(c, 0.0) for c in cons if c is not None))
    if not feasible and not (violation > 0 and math.isfinite(violation)):
        violation = 1.0
    return Outcome("ok", values, cons, feasible, violation)


def invalid_outcome(problem: Problem) -> Outcome:
    return Outcome("invalid", {}, (None,) * len(problem.constraints), False, math.inf)


class TunerBridge(Strategy):
    """Base of strategies that drive an external ask/tell optimiser (see the module doc).

    Subclasses set ``Params`` (with ``max_asks`` and ``max_retries``) and implement the
    ``_backend_*`` methods, ``_needs_penalty`` and ``_can_penalise``; ``_observe`` sees
    every real outcome in the order it is told (penalty scales)."""

    def __init__(self, problem: Problem, params=None, **kwargs):
        super().__init__(problem, params, **kwargs)
        if not problem.objectives:
            raise ParamError("objectives", f"strategy '{self.name}' needs at least one objective "
                             "in the experiment")
        self._decisions = list(self.space.decisions())
        self._log: list[list[Any]] = []
        self._base_seed = int(self.seed)
        self._replay_first: dict[str, int] | None = None
        self._replay_cut = 0
        self._reset()

    # -- to implement ------------------------------------------------------
    @abc.abstractmethod
    def _backend_reset(self, seed: int) -> None:
        """A fresh optimiser seeded with ``seed``."""

    @abc.abstractmethod
    def _backend_ask(self) -> tuple[Any, list[int]] | None:
        """The optimiser's next proposal: ``(handle, indices)``, or None when it has none."""

    @abc.abstractmethod
    def _backend_inject(self, indices: list[int]) -> Any:
        """Make ``indices`` the optimiser's own proposal; its handle, or None when the
        optimiser cannot take one (the result is then reported with handle None)."""

    @abc.abstractmethod
    def _backend_report(self, handle: Any, indices: list[int], outcome: Outcome) -> None:
        """Tell the optimiser the outcome of a proposal (handle None: a known result)."""

    @abc.abstractmethod
    def _needs_penalty(self, outcome: Outcome) -> bool:
        """True when reporting ``outcome`` needs the penalty scale."""

    @abc.abstractmethod
    def _can_penalise(self) -> bool:
        """True once the penalty scale is known."""

    @abc.abstractmethod
    def _spec(self) -> dict[str, Any]:
        """What must not change between a saved state and the instance replaying it."""

    def _observe(self, outcome: Outcome) -> None:
        """A real outcome was told (penalty scales)."""

    # -- state of the search (rebuilt by replay) ---------------------------
    def _reset(self) -> None:
        self.rng = np.random.default_rng(self._base_seed)
        self._open: dict[str, list[tuple[Any, list[int]]]] = {}  # arch id -> proposals awaiting it
        self._told: dict[str, Outcome] = {}                    # arch id -> outcome told
        self._deferred: list[tuple[Any, list[int], Outcome]] = []
        self._asking: set[str] = set()
        self._valid: list[Architecture] | None = None
        self._counts = {"asks": 0, "invalid": 0, "seen": 0, "fallback": 0}
        self._backend_reset(self._base_seed)

    def _seen(self, arch_id: str) -> bool:
        if self._replay_first is not None:   # the history as it was at the replayed ask
            return self._replay_first.get(arch_id, math.inf) < self._replay_cut
        return self.seen(arch_id)

    def _known(self, arch_id: str) -> bool:
        return (arch_id in self._asking or arch_id in self._open or arch_id in self._told
                or self._seen(arch_id))

    # -- ask -----------------------------------------------------------------
    def ask(self, n: int) -> list[Architecture]:
        trials = self.history.trials()
        cut = trials[-1].number + 1 if trials else 0
        self._log.append(["a", int(n), int(cut)])
        return self._ask(n)

    def _ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        self._asking = set()
        try:
            while len(out) < n:
                arch = self._propose()
                if arch is None:
                    break
                self._asking.add(arch.id)
                out.append(arch)
        finally:
            self._asking = set()
        return out

    def _propose(self) -> Architecture | None:
        """One valid unseen architecture (from the optimiser, else at random), or None."""
        for _ in range(self.params.max_asks):
            got = self._backend_ask()
            if got is None:
                break
            self._counts["asks"] += 1
            handle, idx = got
            arch = self.space.from_indices(idx)
            if arch is None:
                self._counts["invalid"] += 1
                self._settle(handle, idx, invalid_outcome(self.problem))
                continue
            if self._known(arch.id):
                self._counts["seen"] += 1
                told = self._told.get(arch.id)
                if told is not None:
                    self._settle(handle, idx, told)
                else:                 # running: told when its result comes
                    self._open.setdefault(arch.id, []).append((handle, idx))
                continue
            self._open[arch.id] = [(handle, idx)]
            return arch
        arch = self._random_unseen()
        if arch is None:
            return None
        self._counts["fallback"] += 1
        idx = self.space.to_indices(arch)
        handle = self._backend_inject(idx)
        self._open[arch.id] = [(handle, idx)] if handle is not None else []
        return arch

    def _random_unseen(self) -> Architecture | None:
        if self.space.size <= ENUMERATE_LIMIT:
            if self._valid is None:
                canon: dict[str, Architecture] = {}
                for a in self.space.enumerate():
                    a = self.space.canonicalize(a)
                    canon.setdefault(a.id, a)
                self._valid = list(canon.values())
            unseen = [a for a in self._valid if not self._known(a.id)]
            return unseen[int(self.rng.integers(len(unseen)))] if unseen else None
        for _ in range(self.params.max_retries):
            try:
                arch = self.space.canonicalize(self.space.sample(self.rng))
            except RuntimeError:
                return None
            if not self._known(arch.id) and self.space.validate(arch) is None:
                return arch
        return None

    # -- tell ----------------------------------------------------------------
    def tell(self, trials: Sequence[Trial]) -> None:
        done = [t for t in trials if t.status != "running"]
        if not done:
            return
        entry: list[Any] = []
        for t in done:
            rec = self.history.latest(t.arch.id)
            entry.append(t.number if rec is not None and rec.number == t.number and rec == t
                         else _trial_doc(t))
        self._log.append(["t", entry])
        self._tell(done)

    def _tell(self, trials: Sequence[Trial]) -> None:
        for t in trials:
            outcome = outcome_of(self.problem, t)
            prev = self._told.get(t.arch.id)
            if prev is not None and not (prev.kind == "failed" and outcome.kind != "failed"):
                continue          # already known (a duplicate answered from the store)
            self._told[t.arch.id] = outcome
            if outcome.kind == "ok":
                self._observe(outcome)
            waiting = self._open.pop(t.arch.id, None)
            if waiting:
                for handle, idx in waiting:
                    self._settle(handle, idx, outcome)
            else:                 # not proposed by the optimiser: a reference, a random pick...
                idx = self.space.to_indices(t.arch)
                if idx is not None:
                    self._settle(self._backend_inject(idx), idx, outcome)
            self._flush()

    def _settle(self, handle: Any, idx: list[int], outcome: Outcome) -> None:
        if self._needs_penalty(outcome) and not self._can_penalise():
            self._deferred.append((handle, idx, outcome))
        else:
            self._backend_report(handle, idx, outcome)

    def _flush(self) -> None:
        if self._deferred and self._can_penalise():
            waiting, self._deferred = self._deferred, []
            for handle, idx, outcome in waiting:
                self._backend_report(handle, idx, outcome)

    # -- state ---------------------------------------------------------------
    #: the log grows with the run: stored as a journal of the calls since the last whole state
    journals = True

    def state_dict(self) -> dict[str, Any]:
        self._journaled = len(self._log)
        return {"version": STATE_VERSION, "seed": self._base_seed, "spec": self._spec(),
                "decisions": [d.name for d in self._decisions], "rng": self.rng_state(),
                "log": list(self._log)}

    def state_delta(self) -> dict[str, Any] | None:
        start = getattr(self, "_journaled", 0)
        if start >= len(self._log):
            return None
        self._journaled = len(self._log)
        return {"log": [list(e) for e in self._log[start:]], "rng": self.rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"the saved '{self.name}' state has version {state.get('version')}, "
                             f"this nasframe reads version {STATE_VERSION}: start a new run")
        names = [d.name for d in self._decisions]
        if state.get("decisions") != names:
            raise ValueError(f"the saved '{self.name}' state was made for decisions "
                             f"{state.get('decisions')} but search space '{self.space.name}' now "
                             f"has {names}; the space changed since the run was saved: start a "
                             "new run")
        spec = self._spec()
        saved = state.get("spec")
        if saved != spec:
            raise ValueError(f"the saved '{self.name}' state was made with {saved}, not {spec}; "
                             "the strategy's params changed since the run was saved: start a "
                             "new run")
        self._base_seed = int(state["seed"])
        self._reset()
        self._log = []
        self._replay(state["log"], state.get("rng"))
        self._journaled = len(self._log)

    def apply_state_delta(self, delta: dict[str, Any]) -> None:
        self._replay(delta["log"], delta.get("rng"))
        self._journaled = len(self._log)

    def _replay(self, events: list[list[Any]], rng: Any) -> None:
        """Replay logged calls into the optimiser, reading the trials from the history."""
        first: dict[str, int] = {}
        by_number: dict[int, Trial] = {}
        for t in self.history.trials():
            by_number[t.number] = t
            first.setdefault(t.arch.id, t.number)
        diverged = []
        self._replay_first = first
        try:
            for event in events:
                if event[0] == "a":
                    self._replay_cut = int(event[2])
                    asked = self._ask(int(event[1]))
                    diverged += [a.id for a in asked if a.id not in first]
                elif event[0] == "t":
                    trials = []
                    for x in event[1]:
                        t = by_number.get(x) if isinstance(x, int) else _trial_from_doc(x)
                        if t is None or t.status == "running":
                            diverged.append(f"trial {x}")
                            continue
                        trials.append(t)
                    self._tell(trials)
        finally:
            self._replay_first = None
        self._log += [list(e) for e in events]
        if diverged or self.rng_state() != (rng if rng is not None else self.rng_state()):
            warnings.warn(f"strategy '{self.name}': replaying the saved run did not reproduce it "
                          f"exactly ({', '.join(map(str, diverged[:3])) or 'generator state'} "
                          "differ); the search continues from the replayed state", RuntimeWarning,
                          stacklevel=2)

    @property
    def counts(self) -> dict[str, int]:
        """Optimiser proposals so far: ``asks``, ``invalid``, ``seen`` (rejected without an
        evaluation) and ``fallback`` (random architectures handed out instead)."""
        return dict(self._counts)


def _trial_doc(t: Trial) -> dict[str, Any]:
    """A told trial in full, for the log (when the history does not hold it)."""
    from nasframe.trial import to_jsonable

    return to_jsonable({"number": t.number, "arch": t.arch.to_dict(), "status": t.status,
                        "values": dict(t.values), "feasible": t.feasible,
                        "violation": t.violation, "failure": t.failure, "origin": t.origin})


def _trial_from_doc(doc: dict[str, Any]) -> Trial:
    values = {k: (math.nan if v is None else float(v)) for k, v in doc["values"].items()}
    violation = doc.get("violation")
    return Trial(int(doc["number"]), Architecture(doc["arch"]), doc["status"], values,
                 feasible=doc.get("feasible"),
                 violation=math.inf if violation is None else float(violation),
                 failure=doc.get("failure"), origin=doc.get("origin", "strategy"))
