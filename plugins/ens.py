"""``ens``: multi-objective evolutionary search (NSGA-II) over a space's decisions.

The search of the ENS paper: which block slots of a hybrid transformer/SSM
U-Net stay transformers, trading quality (PSNR, maximised) against cost
(the transformer count, minimised). Nothing here is specific to that space:
any finite-decision space with any objectives works.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from nasframe.architecture import Architecture
from nasframe.errors import did_you_mean
from nasframe.params import Field, Float, Int, ParamError, Params
from nasframe.pareto import pareto_mask
from nasframe.strategy import Strategy
from nasframe.trial import Problem, Trial

#: objective value given to failed trials and missing values (minimisation form)
BAD = 1e12
#: constraint violation of a failed trial: worse than any real violation (those are capped at BAD)
FAILED_VIOLATION = 1e15


class EnsStrategy(Strategy):
    """NSGA-II (pymoo) on the decisions' integer indices, driven by ask/tell.

    Each decision is an integer gene (its index among the decision's values);
    parents are chosen by binary tournament (constraint violation, then
    dominance, then crowding), children made by uniform crossover and a
    random-reset mutation (each gene with probability ``mutation_prob``, by
    default 1 / number of decisions, takes another value). Every child is
    canonicalised and validated by the space; invalid children, and children
    already proposed or told, are rejected as duplicates and pymoo mates again.
    When mating cannot fill a generation (a small or converged space), random
    unseen architectures fill it; ``ask`` returns fewer, or none, once the
    space is exhausted.

    Sample efficiency (both on by default, both generic): the first generation
    is a space-filling design (``initial: maximin``: among ``16 x population``
    random unseen architectures, greedily the one farthest, in Hamming distance
    over the decisions, from everything the run has seen and chosen so far),
    and every later generation is screened (``screen``): NSGA-II's operators
    make ``screen x population`` children, a ridge regression on the one-hot
    decisions (a decision of more than 16 values: its index, scaled), fit on the run's complete trials, predicts each objective and
    constrained value of each child, and the ``population`` children with the
    largest predicted hypervolume improvement (greedily, each counted over the
    observed front plus the children already sent; a child predicted
    infeasible by its predicted violation, a constrained value being given the
    benefit of the model's leave-one-out error) are sent, ties in NSGA-II's
    own order; a share ``explore`` of each generation is sent unscreened, in
    NSGA-II's order. ``screen: 1, initial: random`` is plain NSGA-II.

    A generation is ``population`` architectures. It
    closes when all of it has been handed out and more is asked for: every
    trial told since (its own results, reference architectures, any other
    trial) joins the current population in NSGA-II survival
    (rank and crowding, constraint violation first), so good reference
    architectures become parents. Objectives come from the problem, each
    to be minimised (maximised ones negated); the trial's constraint violation
    is pymoo's single inequality constraint. Failed trials, and missing
    values, get a very bad fitness.

    :meth:`pick` recommends, among the feasible complete trials on the Pareto
    front, the one maximising ``quality - penalty * cost``; with ``max_drop``, the
    lowest-``cost`` trial whose ``quality`` is at most ``max_drop`` below the reference
    architecture ``baseline``'s (ENS's own question: the fastest network within 0.3 dB
    of the teacher), whatever the scale of ``cost``.

    State: the generator, the generation counter, the population and the
    trials told since the last survival (indices with their objective and
    violation values) and the queued proposals; which architectures the run
    has seen, and the data of the screening model, come from the history (the model is
    refit at each generation). pymoo's algorithm is rebuilt from it at each generation with
    a seed drawn from ``self.rng``, so a resumed instance continues the same
    search.
    """

    name = "ens"
    known_as = {"nsga": "`ens` (NSGA-II, pymoo)", "nsga2": "`ens` (NSGA-II, pymoo)",
                "nsgaii": "`ens` (NSGA-II, pymoo)", "evolution": "`ens` (NSGA-II, pymoo)",
                "evolutionary": "`ens` (NSGA-II, pymoo)", "genetic": "`ens` (NSGA-II, pymoo)",
                "moo": "`ens` (NSGA-II, pymoo)"}

    class Params(Params):
        population: Int = Field(16, ge=2, le=100_000)
        """Architectures per generation."""
        penalty: Float = Field(0.1, ge=0)
        """Weight of `cost` in the pick: quality - penalty x cost."""
        max_drop: Float | None = Field(None, ge=0)
        """Pick by a bound instead of the penalty: the lowest-`cost` trial whose `quality` is at most this much below the reference architecture `baseline`'s (e.g. 0.3: within 0.3 dB of the teacher; null: the penalty rule)."""
        baseline: str = "teacher"
        """The reference architecture of the space that `max_drop` is counted from."""
        quality: str | None = None
        """The maximised objective of the pick (default: the first maximised one)."""
        cost: str | None = None
        """The minimised objective of the pick (default: transformer_count if searched, else the first minimised one)."""
        crossover_prob: Float = Field(0.9, ge=0, le=1)
        """Probability that two parents are crossed (uniform crossover)."""
        mutation_prob: Float | None = Field(None, gt=0, le=1)
        """Per-gene mutation probability (default: 1 / number of decisions)."""
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Consecutive seen or invalid random draws before a generation stays short."""
        screen: Int = Field(16, ge=1, le=1000)
        """Children made per child sent: the screening model sends the `population` of `screen x population` NSGA-II children with the best predicted hypervolume improvement (1: no screening)."""
        initial: Literal["maximin", "random"] = "maximin"
        """The first generation: `maximin` (random architectures spread out in Hamming distance from each other and from the trials told first) or `random`."""
        explore: Float = Field(0.25, ge=0, le=1)
        """Share of each screened generation sent unscreened, in NSGA-II's order."""
        ridge: Float = Field(1.0, gt=0)
        """L2 penalty of the screening model's ridge regression (on one-hot decisions; a decision of more than 16 values enters as its scaled index)."""

    def __init__(self, problem: Problem, params=None, **kwargs):
        super().__init__(problem, params, **kwargs)
        p = self.params
        self.population = p.population
        self.penalty = float(p.penalty)
        self.max_drop = None if p.max_drop is None else float(p.max_drop)
        self.baseline = p.baseline
        if self.max_drop is not None:
            refs = self.space.reference_architectures()
            if self.baseline not in refs:
                raise ParamError("baseline", f"must name a reference architecture of "
                                 f"'{self.space.name}' ({', '.join(refs) or 'it has none'}), got "
                                 f"{self.baseline!r}{did_you_mean(self.baseline, refs)}")
        self.crossover_prob = float(p.crossover_prob)
        self.mutation_prob = None if p.mutation_prob is None else float(p.mutation_prob)
        self.max_retries = p.max_retries
        self.screen = p.screen
        self.initial = p.initial
        self.ridge = float(p.ridge)
        self.explore = float(p.explore)
        specs = {o.key: o for o in problem.objectives}
        self.quality = self._pick_key("quality", p.quality, "max", specs)
        self.cost = self._pick_key("cost", p.cost, "min", specs)
        self._decisions = list(self.space.decisions())
        self._counts = np.array([d.count for d in self._decisions], dtype=np.int64)
        # search state (all of it in state_dict)
        self._gen = 0
        self._pop: list[dict[str, Any]] = []      # survivors of the last selection
        self._told: list[dict[str, Any]] = []     # individuals told since the last selection
        self._queue: list[list[int]] = []         # this generation, not yet handed out
        self._members: set[str] = set()           # ids in _pop or _told
        self._asking: set[str] = set()            # handed out by the current ask (transient)
        self._ids: dict[bytes, str | None] = {}   # indices -> arch id or None (a cache)
        #: the screening model's data (a cache of the history): arch id -> (latest trial,
        #: indices, values, minimised objectives if feasible), and the observed front
        self._data: dict[str, Any] = {"rows": {}, "front": np.zeros((0, 0))}

    def _arch_id(self, x) -> str | None:
        """The id of the architecture of decision indices ``x`` (None: invalid), cached."""
        key = np.asarray(x, dtype=np.int64).tobytes()
        if key not in self._ids:
            arch = self.space.from_indices([int(v) for v in x])
            self._ids[key] = None if arch is None else arch.id
        return self._ids[key]

    def _known(self, arch_id: str) -> bool:
        """Seen by the run, or handed out by the ask in progress."""
        return self.seen(arch_id) or arch_id in self._asking

    @staticmethod
    def _pick_key(param: str, key: str | None, direction: str, specs: dict) -> str | None:
        if key is None:
            if param == "cost" and "transformer_count" in specs:
                return "transformer_count"
            return next((k for k, s in specs.items() if s.direction == direction), None)
        if key not in specs:
            raise ParamError(param, f"must name one of the experiment's objectives "
                             f"({', '.join(specs) or 'none'}), got {key!r}{did_you_mean(key, specs)}")
        if specs[key].direction != direction:
            word = "maximised" if direction == "max" else "minimised"
            raise ParamError(param, f"must name an objective that is {word}, but {key!r} has "
                             f"direction '{specs[key].direction}'; choose another objective or "
                             f"set its direction to '{direction}' in the experiment")
        return key

    # -- trials as pymoo records ---------------------------------------
    def _record(self, trial: Trial) -> dict[str, Any] | None:
        x = self.space.to_indices(trial.arch)
        if x is None:
            return None
        if trial.status == "failed":
            F, G = [BAD] * len(self.problem.objectives), FAILED_VIOLATION
        else:
            F = [float(v) if math.isfinite(v) else BAD for v in self.problem.minimised(trial)]
            F = [min(v, BAD) for v in F]
            violation = trial.violation if trial.feasible is False else 0.0
            if trial.feasible is False and violation <= 0:
                violation = 1.0
            if not math.isfinite(violation) or violation > BAD:
                violation = BAD
            G = float(violation)
            if trial.status != "complete" and G == 0.0:  # infeasible, values missing: incomplete
                G = 1.0
        return {"id": trial.arch.id, "x": x, "F": F, "G": G}

    # -- ask / tell ------------------------------------------------------
    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        self._asking = set()
        while len(out) < n:
            if not self._queue:
                self._next_generation()
                if not self._queue:
                    break
            arch = self.space.from_indices(self._queue.pop(0))
            if arch is None or self._known(arch.id):
                continue
            self._asking.add(arch.id)
            out.append(arch)
        self._asking = set()
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        for t in trials:
            if t.status == "running":
                continue
            rec = self._record(t)
            if rec is None or rec["id"] in self._members:
                continue
            self._members.add(rec["id"])
            self._told.append(rec)

    # -- generations -----------------------------------------------------
    def _next_generation(self) -> None:
        """Select survivors from everything told, then fill the queue with children."""
        self._gen += 1
        records = self._pop + self._told
        self._told = []
        queued: set[str] = set()
        if records:
            seed = int(self.rng.integers(2**63))
            algo = self._algorithm(seed, queued)
            algo.tell(infills=self._as_population(records))  # ranks and crowding of all
            algo.tell(infills=None)                           # NSGA-II survival to `population`
            pop = algo.pop
            ids = {tuple(r["x"]): r["id"] for r in records}
            self._pop = [{"id": ids[tuple(int(v) for v in x)], "x": [int(v) for v in x],
                          "F": [float(v) for v in f], "G": float(g[0])}
                         for x, f, g in zip(pop.get("X"), pop.get("F"), pop.get("G"))]
            self._members = {r["id"] for r in self._pop}
            first = self._gen == 1 and self.initial == "maximin"
            off = algo.ask() if len(self._pop) >= 2 and not first else None
            children: list[list[int]] = []
            if off is not None:
                for x in off.get("X"):
                    arch_id = self._arch_id(x)
                    if arch_id is not None and not self._known(arch_id) and arch_id not in queued:
                        queued.add(arch_id)
                        children.append([int(v) for v in x])
            if self.screen > 1 and children:
                # mating could not fill the pool (invalid or seen children): random unseen
                # architectures top it up, screened like the children (after them in ties)
                want = self.screen * self.population
                children += self._draw_unseen(want - len(children), queued,
                                              min(want, self.max_retries))
            sent = self._screened(children)
            for x in children:                # children not sent may still be drawn at random
                queued.discard(self._arch_id(x))
            queued.update(self._arch_id(x) for x in sent)
            self._queue.extend(sent)
        if self._gen == 1 and self.initial == "maximin":
            self._queue.extend(self._maximin(self.population - len(self._queue), queued))
        self._queue += self._draw_unseen(self.population - len(self._queue), queued,
                                         self.max_retries)

    def _draw_unseen(self, n: int, queued: set[str], patience: int) -> list[list[int]]:
        """Up to ``n`` random valid architectures not seen nor queued (``patience`` misses in
        a row end the draw)."""
        out: list[list[int]] = []
        misses = 0
        while len(out) < n and misses < patience:
            x = self._random_unseen(queued)
            if x is None:
                misses += 1
                continue
            misses = 0
            out.append(x)
        return out

    def _random_unseen(self, queued: set[str]) -> list[int] | None:
        """A random valid architecture not seen nor queued (added to ``queued``), or None."""
        try:
            arch = self.space.sample(self.rng)
        except RuntimeError:
            return None
        x = self.space.to_indices(arch)
        if x is None or self._known(arch.id) or arch.id in queued:
            return None
        queued.add(arch.id)
        return x

    def _maximin(self, n: int, queued: set[str]) -> list[list[int]]:
        """``n`` of ``16 n`` random unseen architectures, each in turn the farthest (Hamming
        distance over the decisions) from the run's trials and those already chosen."""
        if n <= 0:
            return []
        pool = self._draw_unseen(16 * n, queued, self.max_retries)
        if not pool:
            return []
        X = np.array(pool, dtype=np.int64)
        seen = [x for x in (self.space.to_indices(t.arch) for t in self.history.trials())
                if x is not None]
        near = (np.full(len(X), len(self._decisions) + 1, dtype=np.int64) if not seen else
                (X[:, None, :] != np.array(seen)[None, :, :]).sum(-1).min(1))
        chosen: list[int] = []
        for _ in range(min(n, len(X))):
            masked = np.where(np.isin(np.arange(len(X)), chosen), -1, near)
            i = int(np.argmax(masked))
            chosen.append(i)
            near = np.minimum(near, (X != X[i]).sum(-1))
        for i in set(range(len(X))) - set(chosen):  # the pool's other draws stay unseen
            queued.discard(self._arch_id(pool[i]))
        return [pool[i] for i in chosen]

    # -- the screening model ----------------------------------------------
    def _screened(self, children: list[list[int]]) -> list[list[int]]:
        """The ``population`` children to send: the best predicted hypervolume improvements
        first (greedily), the rest in NSGA-II's order."""
        if self.screen <= 1 or len(children) <= self.population:
            return children[: self.population]
        data = self._training_data()
        if data is None:
            return children[: self.population]
        X, Y, F_obs = data
        keys = self._model_keys()
        pred, err = self._ridge(X, Y, self._one_hot(np.array(children, dtype=np.int64)))
        col = {k: i for i, k in enumerate(keys)}
        sign = np.array([1.0 if o.direction == "min" else -1.0 for o in self.problem.objectives])
        F = pred[:, [col[o.key] for o in self.problem.objectives]] * sign
        G = np.zeros(len(children))
        for c in self.problem.constraints:
            # optimistic by the model's leave-one-out error: a child near the bound stays in
            toward = err[col[c.key]] if c.op == ">=" else -err[col[c.key]]
            G += np.array([c.violation(float(v) + toward) for v in pred[:, col[c.key]]])
        from pymoo.indicators.hv import HV

        front = F_obs
        if len(front):
            span = np.ptp(np.vstack([front, F[G <= 0]]) if (G <= 0).any() else front, axis=0)
            ref = front.max(0) + 0.1 * np.where(span > 0, span, 1.0)
        chosen: list[int] = []
        left = list(range(len(children)))
        n_model = self.population - int(round(self.explore * self.population))
        while left and len(chosen) < n_model:
            base = HV(ref_point=ref)(front) if len(front) else 0.0
            gains = []
            for i in left:
                if G[i] > 0:
                    gains.append(-G[i])
                elif not len(front):
                    gains.append(0.0)
                else:
                    pts = np.vstack([front, F[i]])
                    pts = pts[(pts < ref).all(1)]
                    gain = HV(ref_point=ref)(pts) - base if len(pts) else 0.0
                    gains.append(gain if gain > 1e-12 * max(base, 1e-300) else 0.0)
            j = int(np.argmax(gains))        # ties: the earliest, NSGA-II's order
            i = left.pop(j)
            chosen.append(i)
            if G[i] <= 0 and len(front):
                front = np.vstack([front, F[i]])
                front = front[(front < ref).all(1)]
        chosen += left[: self.population - len(chosen)]    # exploration: NSGA-II's order
        return [children[i] for i in chosen]

    def _model_keys(self) -> list[str]:
        keys = list(self.problem.keys)
        return keys + [c.key for c in self.problem.constraints if c.key not in keys]

    def _training_data(self):
        """One-hot decisions, values of the model keys and the feasible observed objective
        vectors (minimisation form) of the run's complete trials (the latest of each
        architecture), or None (too few). Incremental: a trial's row is made once, and the
        observed front grows from the last one by the new points (recomputed only when an
        architecture's latest trial changed), so a generation costs little more at 10^4
        trials than at 10^2."""
        keys = self._model_keys()
        cache = self._data
        changed = False
        fresh: list[list[float]] = []
        for t in self.history.finished():
            row = cache["rows"].get(t.arch.id)
            if row is not None and row[0] is t:
                continue
            if row is not None:
                if row[0].number > t.number:          # an older trial of the architecture
                    continue
                changed = changed or row[3] is not None
            cache["rows"][t.arch.id] = (t, *self._row(t, keys))
            f = cache["rows"][t.arch.id][3]
            if f is not None:
                fresh.append(f)
        rows = [r for _, r in sorted(cache["rows"].items()) if r[1] is not None]
        if len(rows) < 3:
            return None
        n_obj = len(self.problem.objectives)
        if changed:
            pts = [r[3] for r in rows if r[3] is not None]
        else:
            pts = [list(f) for f in cache["front"]] + fresh
        F = np.array(pts, dtype=float).reshape(-1, n_obj)
        if len(F):
            from pymoo.util.nds.non_dominated_sorting import find_non_dominated

            F = F[find_non_dominated(F)]
            F = F[np.lexsort(F.T[::-1])]     # one order, however the front was reached
        cache["front"] = F
        return (self._one_hot(np.array([r[1] for r in rows], dtype=np.int64)),
                np.array([r[2] for r in rows]), F)

    def _row(self, t: Trial, keys: list[str]):
        """(decision indices, model-key values, minimised objectives if feasible) of a
        complete trial; (None, None, None) for any other."""
        if t.status != "complete":
            return None, None, None
        v = [t.values.get(k) for k in keys]
        if any(x is None or not math.isfinite(float(x)) for x in v):
            return None, None, None
        x = self.space.to_indices(t.arch)
        if x is None:
            return None, None, None
        feasible = None if t.feasible is False else list(self.problem.minimised(t))
        return list(x), [float(a) for a in v], feasible

    def _one_hot(self, X: np.ndarray) -> np.ndarray:
        """The screening model's features: one-hot columns for a decision of at most
        ``ONE_HOT_MAX`` values, one column (the index scaled to 0..1) for a larger one (an
        integer range: its order is its meaning, and a one-hot of it would not fit)."""
        small = self._counts <= ONE_HOT_MAX
        widths = np.where(small, self._counts, 1)
        offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
        out = np.zeros((len(X), int(widths.sum())))
        rows = np.arange(len(X))
        for j, (count, off) in enumerate(zip(self._counts, offsets)):
            if small[j]:
                out[rows, off + X[:, j]] = 1.0
            else:
                out[rows, off] = X[:, j] / (count - 1)
        return out

    def _ridge(self, X: np.ndarray, Y: np.ndarray, Xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ridge regression of each column of ``Y`` on ``X`` (scaled per column): the
        predictions at ``Xq`` and each column's leave-one-out RMS error."""
        mx, my = X.mean(0), Y.mean(0)
        sy = Y.std(0)
        sy = np.where(sy > 0, sy, 1.0)
        Xc = X - mx
        A_inv = np.linalg.inv(Xc.T @ Xc + self.ridge * np.eye(X.shape[1]))
        W = A_inv @ Xc.T @ ((Y - my) / sy)
        hat = np.einsum("ij,jk,ik->i", Xc, A_inv, Xc)
        loo = ((Y - my) / sy - Xc @ W) / np.maximum(1.0 - hat, 1e-6)[:, None]
        return (Xq - mx) @ W * sy + my, np.sqrt((loo ** 2).mean(0)) * sy

    def _algorithm(self, seed: int, queued: set[str]):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.ux import UniformCrossover

        algo = NSGA2(pop_size=self.population, n_offsprings=self.population * self.screen,
                     crossover=UniformCrossover(prob=self.crossover_prob),
                     mutation=_RandomReset(prob=1.0, prob_var=self.mutation_prob),
                     eliminate_duplicates=_Unseen(self, queued))
        if self.screen > 1:
            # a screening pool may stay short (a converged or nearly exhausted space): mate
            # 10 times, not pymoo's 100, before the random fill takes over
            algo.mating.n_max_iterations = 10
        algo.setup(_IndexProblem(self._counts, len(self.problem.objectives)), seed=seed,
                   termination=NoTermination(), verbose=False)
        return algo

    @staticmethod
    def _as_population(records: list[dict[str, Any]]):
        from pymoo.core.population import Population

        return Population.new(X=np.array([r["x"] for r in records], dtype=np.int64),
                              F=np.array([r["F"] for r in records], dtype=float),
                              G=np.array([[r["G"]] for r in records], dtype=float))

    # -- the pick --------------------------------------------------------
    def pick(self, trials: Sequence[Trial]) -> tuple[Trial, str] | None:
        """Among feasible complete trials on the Pareto front, the one maximising
        ``quality - penalty * cost`` (ties: the earliest trial); with ``max_drop`` and the
        baseline's trial complete, the lowest-``cost`` trial within ``max_drop`` of the
        baseline's ``quality`` (ties: the better quality, then the earliest)."""
        if self.quality is None or self.cost is None:
            return None
        keys = self.problem.keys
        ok = [t for t in trials if t.status == "complete" and t.feasible is not False
              and all(k in t.values and math.isfinite(t.values[k]) for k in keys)]
        if not ok:
            return None
        note = ""
        if self.max_drop is not None:
            base = [t for t in ok if t.origin == f"reference:{self.baseline}"]
            if base:
                bound = base[-1].values[self.quality] - self.max_drop
                within = [t for t in ok if t.values[self.quality] >= bound]
                best = min(within, key=lambda t: (t.values[self.cost], -t.values[self.quality],
                                                  t.number))
                rule = (f"lowest {self.cost} with {self.quality} >= {bound:.6g} ({self.baseline}'s "
                        f"{base[-1].values[self.quality]:.6g} - {self.max_drop:g}): "
                        f"{self.cost} = {best.values[self.cost]:.6g}")
                return best, rule
            note = f" (no complete '{self.baseline}' trial for max_drop yet)"
        values = np.array([[t.values[k] for k in keys] for t in ok], dtype=float)
        mask = pareto_mask(values, [o.direction for o in self.problem.objectives])
        front = [t for t, m in zip(ok, mask) if m]
        best = max(front, key=lambda t: (self._score(t), -t.number))
        rule = f"{self.quality} - {self.penalty:g} * {self.cost} = {self._score(best):.6g}{note}"
        return best, rule

    def _score(self, t: Trial) -> float:
        return float(t.values[self.quality]) - self.penalty * float(t.values[self.cost])

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng_state(), "generation": self._gen, "population": self._pop,
                "told": self._told, "queue": self._queue}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        self._gen = int(state.get("generation", 0))
        self._pop = [dict(r) for r in state.get("population", [])]
        self._told = [dict(r) for r in state.get("told", [])]
        width = len(self._decisions)
        for r in self._pop + self._told + [{"x": x} for x in state.get("queue", [])]:
            if len(r["x"]) != width:
                raise ValueError(f"the saved 'ens' state has {len(r['x'])} decisions per "
                                 f"architecture but search space '{self.space.name}' now has "
                                 f"{width}; the space changed since the run was saved: start a "
                                 "new run")
        self._queue = [list(map(int, x)) for x in state.get("queue", [])]
        self._members = {r["id"] for r in self._pop + self._told}


# ------------------------------------------------------------ pymoo pieces
def _problem_base():
    from pymoo.core.problem import Problem as PymooProblem

    return PymooProblem


class _IndexProblem(_problem_base()):
    """Integer indices ``0 .. count-1`` per decision; evaluated by nasframe, never by pymoo."""

    def __init__(self, counts: np.ndarray, n_obj: int):
        super().__init__(n_var=len(counts), n_obj=n_obj, n_ieq_constr=1,
                         xl=np.zeros(len(counts)), xu=(counts - 1).astype(float), vtype=int)

    def _evaluate(self, x, out, *args, **kwargs):
        raise RuntimeError("architectures are evaluated by nasframe, not by pymoo")


def _mutation_base():
    from pymoo.core.mutation import Mutation

    return Mutation


#: the screening model one-hot encodes a decision of at most this many values
ONE_HOT_MAX = 16


class _RandomReset(_mutation_base()):
    """Each gene, with probability ``prob_var`` (default 1 / n_var), takes another index."""

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = np.asarray(X).astype(np.int64, copy=True)
        if X.size == 0:
            return X
        counts = np.asarray(problem.xu, dtype=np.int64) + 1
        prob = self.get_prob_var(problem, size=len(X))
        prob = np.broadcast_to(np.asarray(prob, dtype=float).reshape(-1, 1), X.shape)
        flip = (random_state.random(X.shape) < prob) & (counts > 1)[None, :]
        # a different index: shift by 1 .. count-1 (mod count)
        shift = np.floor(random_state.random(X.shape) * np.maximum(counts - 1, 1)).astype(np.int64) + 1
        X[flip] = ((X + shift) % counts[None, :])[flip]
        return X


def _duplicate_base():
    from pymoo.core.duplicate import DuplicateElimination

    return DuplicateElimination


class _Unseen(_duplicate_base()):
    """Rejects children that are invalid, already seen or queued, or repeat another child."""

    def __init__(self, strategy: EnsStrategy, queued: set[str]):
        super().__init__()
        self.strategy = strategy
        self.queued = queued

    def _id(self, x) -> str | None:
        return self.strategy._arch_id(x)

    def _do(self, pop, other, is_duplicate):
        ids = [self._id(x) for x in pop.get("X")]
        if other is None:
            first: set[str] = set()
            for i, arch_id in enumerate(ids):
                if (arch_id is None or self.strategy._known(arch_id) or arch_id in self.queued
                        or arch_id in first):
                    is_duplicate[i] = True
                else:
                    first.add(arch_id)
        else:
            others = {self._id(x) for x in other.get("X")}
            for i, arch_id in enumerate(ids):
                if arch_id in others:
                    is_duplicate[i] = True
        return is_duplicate
