"""``eps_bo``: epsilon-constrained Bayesian optimisation over a space's decisions (botorch).

The search of TOC-SR and NanoSD: minimise one objective (GMACs, parameters)
subject to bounds on others (fidelity >= epsilon), optionally sweeping several
epsilons in one run. Nothing here is specific to those spaces: any space whose
decisions are Categorical, Integer or Boolean works. Needs the optional
dependency botorch (``pip install 'nasframe[bo]'``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pydantic import model_validator

from nasframe.architecture import Architecture
from nasframe.errors import did_you_mean
from nasframe.params import Field, Float, Int, ParamError, Params
from nasframe.space import Categorical
from nasframe.strategy import Strategy
from nasframe.trial import Problem, Trial

INSTALL_HINT = "pip install 'nasframe[bo]'"
#: L-BFGS iterations per GP fit (noise-free objectives otherwise take ~1000, seconds per fit)
FIT_MAXITER = 60


class EpsBO(Strategy):
    """Epsilon-constrained Bayesian optimisation with one GP per modelled outcome.

    Params:

    * ``minimise``: the objective to optimise (default: the first objective
      with direction ``min``, else the first objective). It is optimised in
      its own direction, so naming a ``max`` objective maximises it.
    * ``bounds``: ``{key: epsilon}`` for other objectives; a ``max`` objective
      must be ``>= epsilon``, a ``min`` one ``<= epsilon``. The experiment's
      ``constraints`` are always honoured as well (modelled like bounds, and
      through each trial's ``feasible`` flag).
    * ``epsilons`` with ``bounded``: sweep several bounds on ONE objective in
      one run. Each proposal made by the model targets the next epsilon in
      turn (a cycle kept in the state), so ``ask(3)`` with three epsilons makes
      one proposal per epsilon; the run's front merges them all.
    * ``n_initial``: random unseen architectures proposed first (default 8).
      The model is used once they are proposed and two values of the
      optimised objective are known.
    * ``candidates``: most architectures scored by the acquisition per
      proposal: the whole (valid, unseen) space when it is finite and has at
      most this many combinations, else a local search (random restarts and
      the best observed architectures, hill-climbing on one-decision changes).

    Model: a botorch GP per outcome (the optimised objective, each bounded
    objective, each constrained key) on the decisions, each as its index
    scaled to [0, 1]: ``MixedSingleTaskGP`` (a categorical kernel on the
    Categorical decisions) when there are any, else ``SingleTaskGP``; outcomes
    standardised, float64, hyper-parameters fitted with ``fit_gpytorch_mll``
    at every model-based ask under a torch seed drawn from ``self.rng``.
    Only complete, infeasible and pruned trials train a GP, each on the values it has;
    failed trials count as infeasible and are never proposed again.

    Acquisition: ``LogExpectedImprovement`` over the best feasible value so
    far (for the current epsilon) plus the log probability, under the GPs,
    that every bound and constraint holds; when nothing is feasible yet, the
    log probability of feasibility alone. A batch is the greedy top ``n``.

    :meth:`pick`: the feasible complete trial with the best optimised value
    that satisfies the bounds and constraints; with ``epsilons``, for the
    tightest epsilon that some trial satisfies (rule e.g.
    ``min gmacs s.t. fidelity >= 0.9 = 1.23``).

    State: the generator, the epsilon cycle position and the number of random
    proposals. The observations (decision indices, values, status,
    feasibility) are read from the run's history; GPs are refitted from them,
    so a resumed instance continues the same search.
    """

    name = "eps_bo"
    known_as = {"bo": "`eps_bo` (botorch)", "bayesian": "`eps_bo` (botorch)",
                "bayesopt": "`eps_bo` (botorch)", "gp": "`eps_bo` (botorch)",
                "botorch": "`eps_bo` (botorch)", "tocsr": "`eps_bo` (botorch)"}
    dependencies = ("botorch", "gpytorch")
    install_hint = INSTALL_HINT

    class Params(Params):
        minimise: str | None = None
        """The objective to optimise, in its own direction (default: the first minimised one)."""
        bounds: dict[str, Float] = {}
        """Fixed bounds {objective: epsilon}: >= for maximised objectives, <= for minimised ones."""
        epsilons: list[Float] | None = Field(None, min_length=1, max_length=1000)
        """Several bounds on ONE objective (`bounded`), swept in one run."""
        bounded: str | None = None
        """The objective `epsilons` bound (default: the only objective besides `minimise` and `bounds`)."""
        n_initial: Int = Field(8, ge=0, le=100_000)
        """Random architectures proposed before the model is used."""
        candidates: Int = Field(2048, ge=1, le=10_000_000)
        """Architectures scored per proposal: the whole space when it has at most this many, else a local search."""
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Consecutive seen or invalid random draws before the space counts as exhausted."""

        @model_validator(mode="after")
        def _bounded_needs_epsilons(self):
            if self.epsilons is None and self.bounded is not None:
                raise ValueError(f"`bounded: {self.bounded}` needs `epsilons` (a list of bounds to "
                                 "sweep, e.g. `epsilons: [0.8, 0.9]`); for a single bound use "
                                 f"`bounds: {{{self.bounded}: EPSILON}}`")
            return self

    def __init__(self, problem: Problem, params=None, **kwargs):
        super().__init__(problem, params, **kwargs)
        p = self.params
        specs = {o.key: o for o in problem.objectives}
        keys = ", ".join(specs) or "none"
        if not specs:
            raise ParamError("minimise", "strategy 'eps_bo' needs at least one objective in the "
                             "experiment")
        # -- the optimised objective
        minimise = p.minimise
        if minimise is None:
            minimise = next((k for k, s in specs.items() if s.direction == "min"), next(iter(specs)))
        elif minimise not in specs:
            raise ParamError("minimise", f"must name one of the experiment's objectives ({keys}), "
                             f"got {minimise!r}{did_you_mean(minimise, specs)}")
        self.minimise = minimise
        self.direction = specs[minimise].direction
        # -- fixed bounds
        self.bounds: dict[str, float] = {}
        for key, eps in p.bounds.items():
            self._check_bound_key(f"bounds.{key}", key, specs)
            self.bounds[key] = float(eps)
        # -- epsilon sweep
        bounded = p.bounded
        if p.epsilons is None:
            self.epsilons: list[float] = []
            self.bounded: str | None = None
        else:
            if bounded is None:
                others = [k for k in specs if k != minimise and k not in self.bounds]
                if len(others) != 1:
                    raise ParamError("bounded", "`epsilons` needs `bounded`: the objective they "
                                     f"bound (one of {', '.join(others) or 'none'}), e.g. "
                                     "`bounded: fidelity`")
                bounded = others[0]
            self._check_bound_key("bounded", bounded, specs)
            if bounded in self.bounds:
                raise ParamError("bounded", f"`{bounded}` is also in `bounds`; sweep it with "
                                 "`epsilons` or fix it in `bounds`, not both")
            self.epsilons = [float(e) for e in p.epsilons]
            self.bounded = bounded
        self.n_initial, self.candidates, self.max_retries = p.n_initial, p.candidates, p.max_retries
        self._specs = specs
        self._decisions = list(self.space.decisions())
        self._counts = [d.count for d in self._decisions]
        self._cat_dims = [i for i, d in enumerate(self._decisions)
                          if isinstance(d, Categorical) and d.count > 1]
        self._all: np.ndarray | None = None  # the enumerated space (index rows), when small
        self._all_archs: list[Architecture] = []
        self._asking: set[str] = set()        # proposed by the ask in progress (transient)
        # search state (all of it in state_dict); observations come from the history
        self._cycle = 0
        self._n_random = 0

    def _check_bound_key(self, param: str, key: Any, specs: dict) -> None:
        if key not in specs:
            raise ParamError(param, f"must name one of the experiment's objectives "
                             f"({', '.join(specs)}), got {key!r}{did_you_mean(key, specs)}")
        if key == self.minimise:
            raise ParamError(param, f"names {key!r}, the objective being optimised "
                             "(`minimise`); bound another objective or choose another `minimise`")

    # -- targets: the bounds of one epsilon ------------------------------
    def _ops(self, key: str) -> str:
        return ">=" if self._specs[key].direction == "max" else "<="

    def _targets(self) -> list[list[tuple[str, str, float]]]:
        """One list of ``(key, op, bound)`` per epsilon (just one without a sweep)."""
        fixed = [(k, self._ops(k), b) for k, b in self.bounds.items()]
        fixed += [(c.key, c.op, c.bound) for c in self.problem.constraints]
        if not self.epsilons:
            return [fixed]
        return [fixed + [(self.bounded, self._ops(self.bounded), e)] for e in self.epsilons]

    @staticmethod
    def _holds(value: float, op: str, bound: float) -> bool:
        return value >= bound if op == ">=" else value <= bound

    def _satisfies(self, values: Mapping[str, float], feasible: bool | None,
                   target: list[tuple[str, str, float]]) -> bool:
        if feasible is False:
            return False
        for key, op, bound in target:
            v = values.get(key)
            if v is None or not math.isfinite(v):
                return False
            if not self._holds(float(v), op, bound):
                return False
        return True

    # -- encoding --------------------------------------------------------
    def _features(self, rows: np.ndarray):
        import torch

        scale = np.array([max(c - 1, 1) for c in self._counts], dtype=float)
        return torch.as_tensor(np.asarray(rows, dtype=float) / scale, dtype=torch.float64)

    # -- ask / tell ------------------------------------------------------
    @property
    def _obs(self) -> dict[str, dict[str, Any]]:
        """Observations from the history: arch id -> decision indices, finite values,
        status and feasibility of its latest finished trial (in trial order)."""
        obs: dict[str, dict[str, Any]] = {}
        for t in self.history.finished():
            x = self.space.to_indices(t.arch)
            if x is None:
                continue
            values = {} if t.status == "failed" else {
                k: float(v) for k, v in t.values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            feasible = False if t.status == "failed" else t.feasible
            obs.pop(t.arch.id, None)
            obs[t.arch.id] = {"x": x, "values": values, "status": t.status, "feasible": feasible}
        return obs

    def _known(self, arch_id: str) -> bool:
        return self.seen(arch_id) or arch_id in self._asking

    def tell(self, trials: Sequence[Trial]) -> None:
        """Nothing to store: observations are read from the history at each ask."""

    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        models = None
        self._asking = set()
        obs = self._obs
        while len(out) < n:
            n_obs = sum(1 for o in obs.values() if self.minimise in o["values"])
            if self._n_random < self.n_initial or n_obs < 2:
                arch = self._random()
                if arch is None:
                    break
                self._n_random += 1
            else:
                if models is None:
                    models = self._fit(obs)
                target = self._targets()[self._cycle % len(self._targets())]
                arch = self._propose(models, target, obs)
                if arch is None:
                    break
                self._cycle += 1
            self._asking.add(arch.id)
            out.append(arch)
        self._asking = set()
        return out

    def _random(self) -> Architecture | None:
        misses = 0
        while misses < self.max_retries:
            try:
                arch = self.space.sample(self.rng)
            except RuntimeError:
                return None
            if self._known(arch.id) or self.space.to_indices(arch) is None:
                misses += 1
                continue
            return arch
        # maybe the space is nearly exhausted: take the first unseen one, if it is small
        rows = self._enumerated()
        if rows is not None:
            for arch in self._all_archs:
                if not self._known(arch.id):
                    return arch
        return None

    # -- the model -------------------------------------------------------
    def _fit(self, obs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """A fitted GP per modelled key that has at least two values."""
        import torch

        keys = [self.minimise]
        for target in self._targets():
            keys += [k for k, _, _ in target if k not in keys]
        seed = int(self.rng.integers(2**31 - 1))
        models: dict[str, Any] = {}
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            for key in keys:
                data = [(o["x"], o["values"][key]) for o in obs.values()
                        if o["status"] != "failed" and key in o["values"]]
                if len(data) >= 2:
                    models[key] = self._gp(np.array([d[0] for d in data]),
                                           np.array([d[1] for d in data], dtype=float))
        return models

    def _gp(self, rows: np.ndarray, y: np.ndarray):
        import torch
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import MixedSingleTaskGP, SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        X = self._features(rows)
        Y = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)
        if self._cat_dims:
            model = MixedSingleTaskGP(X, Y, cat_dims=self._cat_dims,
                                      outcome_transform=Standardize(m=1))
        else:
            model = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        try:
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}})
        except Exception:  # noqa: BLE001 - a poorly fitted GP still ranks candidates
            pass
        model.eval()
        return model

    def _scorer(self, models: dict[str, Any], target: list[tuple[str, str, float]],
                obs: dict[str, dict[str, Any]]):
        """The acquisition for one target: rows of indices -> log scores (numpy)."""
        import torch
        from botorch.acquisition import LogExpectedImprovement

        feasible = [o["values"][self.minimise] for o in obs.values()
                    if self.minimise in o["values"] and o["status"] == "complete"
                    and self._satisfies(o["values"], o["feasible"], target)]
        terms = [(models[k], op, b) for k, op, b in target if k in models]
        maximize = self.direction == "max"
        logei = None
        if feasible or not terms:
            pool = feasible or [o["values"][self.minimise] for o in obs.values()
                                if self.minimise in o["values"]]
            best = max(pool) if maximize else min(pool)
            logei = LogExpectedImprovement(models[self.minimise], best_f=best, maximize=maximize)

        def score(rows: np.ndarray) -> np.ndarray:
            X = self._features(rows)
            out = torch.zeros(len(X), dtype=torch.float64)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if logei is not None:
                    out += logei(X.unsqueeze(1))
                for model, op, bound in terms:
                    post = model.posterior(X)
                    mu = post.mean.squeeze(-1)
                    sd = post.variance.clamp_min(1e-12).sqrt().squeeze(-1)
                    z = (bound - mu) / sd
                    out += torch.special.log_ndtr(z if op == "<=" else -z)
            return out.numpy()

        return score

    # -- candidates ------------------------------------------------------
    def _enumerated(self) -> np.ndarray | None:
        if self.space.size > self.candidates:
            return None
        if self._all is None:
            pairs, ids = [], set()
            for a in self.space.enumerate():
                a = self.space.canonicalize(a)
                x = self.space.to_indices(a)
                if x is not None and a.id not in ids:
                    ids.add(a.id)
                    pairs.append((a, x))
            self._all_archs = [a for a, _ in pairs]
            self._all = np.array([x for _, x in pairs], dtype=np.int64).reshape(
                -1, len(self._decisions))
        return self._all

    def _propose(self, models: dict[str, Any], target, obs) -> Architecture | None:
        if self.minimise not in models:
            return self._random()
        score = self._scorer(models, target, obs)
        rows = self._enumerated()
        if rows is not None:
            ids = self._all_archs
            keep = [i for i, a in enumerate(ids) if not self._known(a.id)]
            if not keep:
                return None
            s = score(rows[keep])
            return ids[keep[int(np.argmax(s))]]
        return self._local_search(score, obs)

    def _local_search(self, score, obs) -> Architecture | None:
        """Hill-climbing on the acquisition from random and the best observed
        architectures, over the space's :meth:`~nasframe.space.SearchSpace.neighbours`."""
        scored: dict[str, tuple[float, Architecture]] = {}
        starts: list[Architecture] = []
        observed = sorted((o for o in obs.values() if self.minimise in o["values"]),
                          key=lambda o: self._specs[self.minimise].to_min(o["values"][self.minimise]))
        for o in observed[:3]:
            a = self.space.from_indices(o["x"])
            if a is not None:
                starts.append(a)
        for _ in range(8):
            a = self._random()
            if a is not None:
                starts.append(a)
        for start in starts:
            if len(scored) >= self.candidates:
                break
            cur = start
            if cur.id not in scored:
                scored[cur.id] = (float(score(np.array([self.space.to_indices(cur)]))[0]), cur)
            while len(scored) < self.candidates:
                archs = {a.id: a for a in self.space.neighbours(cur, self.rng)
                         if a.id not in scored}
                if not archs:
                    break
                group = list(archs.values())[: self.candidates - len(scored)]
                s = score(np.array([self.space.to_indices(a) for a in group]))
                for a, v in zip(group, s):
                    scored[a.id] = (float(v), a)
                k = int(np.argmax(s))
                if s[k] <= scored[cur.id][0]:
                    break
                cur = group[k]
        best = [(v, a) for v, a in scored.values() if not self._known(a.id)]
        if not best:
            return self._random()
        return max(best, key=lambda t: t[0])[1]

    # -- the pick --------------------------------------------------------
    def pick(self, trials: Sequence[Trial]) -> tuple[Trial, str] | None:
        """The best feasible complete trial under the bounds and constraints.

        With ``epsilons``, the tightest epsilon some trial satisfies decides
        (largest for a ``max`` objective, smallest for a ``min`` one). Ties:
        the earliest trial.
        """
        targets = self._targets()
        shown = [(k, self._ops(k), b) for k, b in self.bounds.items()]
        order = list(range(len(targets)))
        if self.epsilons:
            sign = -1.0 if self._ops(self.bounded) == ">=" else 1.0
            order.sort(key=lambda i: sign * self.epsilons[i])
        done = [t for t in trials if t.status == "complete" and self.minimise in t.values
                and math.isfinite(t.values[self.minimise])]
        sign = self._specs[self.minimise].to_min
        for i in order:
            ok = [t for t in done if self._satisfies(t.values, t.feasible, targets[i])]
            if not ok:
                continue
            best = min(ok, key=lambda t: (sign(float(t.values[self.minimise])), t.number))
            bounds = shown + ([(self.bounded, self._ops(self.bounded), self.epsilons[i])]
                              if self.epsilons else [])
            st = (" s.t. " + ", ".join(f"{k} {op} {b:g}" for k, op, b in bounds)) if bounds else ""
            rule = f"{self.direction} {self.minimise}{st} = {float(best.values[self.minimise]):.6g}"
            return best, rule
        return None

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng_state(), "cycle": self._cycle, "n_random": self._n_random}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        self._cycle = int(state.get("cycle", 0))
        self._n_random = int(state.get("n_random", 0))
