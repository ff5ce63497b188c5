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

from nasframe.architecture import Architecture
from nasframe.space import Categorical
from nasframe.strategy import SeenIds, Strategy
from nasframe.trial import Problem, Trial
from plugins._params import check_number

INSTALL_HINT = "pip install 'nasframe[bo]'"
#: L-BFGS iterations per GP fit (noise-free objectives otherwise take ~1000, seconds per fit)
FIT_MAXITER = 60


def _require_botorch() -> None:
    try:
        import botorch  # noqa: F401
        import gpytorch  # noqa: F401
    except ImportError as err:
        from nasframe.errors import ConfigError

        raise ConfigError(f"strategy 'eps_bo' needs botorch, which is not installed ({err}); "
                          f"install it with: {INSTALL_HINT}") from err


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
    Only complete and pruned trials train a GP, each on the values it has;
    failed trials count as infeasible and are never proposed again.

    Acquisition: ``LogExpectedImprovement`` over the best feasible value so
    far (for the current epsilon) plus the log probability, under the GPs,
    that every bound and constraint holds; when nothing is feasible yet, the
    log probability of feasibility alone. A batch is the greedy top ``n``.

    :meth:`pick`: the feasible complete trial with the best optimised value
    that satisfies the bounds and constraints; with ``epsilons``, for the
    tightest epsilon that some trial satisfies (rule e.g.
    ``min gmacs s.t. fidelity >= 0.9 = 1.23``).

    State: the generator, the seen ids (in order), the observations (decision
    indices, values, status, feasibility), the epsilon cycle position, the
    number of random proposals and the pending ids. GPs are refitted from it,
    so a resumed instance continues the same search.
    """

    name = "eps_bo"

    def __init__(self, problem: Problem, seed: int = 0, minimise: str | None = None,
                 bounds: Mapping[str, float] | None = None,
                 epsilons: Sequence[float] | None = None, bounded: str | None = None,
                 n_initial: int = 8, candidates: int = 2048, max_retries: int = 1000):
        super().__init__(problem, seed)
        _require_botorch()
        specs = {o.key: o for o in problem.objectives}
        keys = ", ".join(specs) or "none"
        if not specs:
            raise ValueError("strategy 'eps_bo' needs at least one objective in the experiment")
        # -- the optimised objective
        if minimise is None:
            minimise = next((k for k, s in specs.items() if s.direction == "min"), next(iter(specs)))
        elif not isinstance(minimise, str) or minimise not in specs:
            raise ValueError(f"`minimise` must name one of the experiment's objectives ({keys}), "
                             f"got {minimise!r}; e.g. `minimise: {next(iter(specs))}`")
        self.minimise = minimise
        self.direction = specs[minimise].direction
        # -- fixed bounds
        if bounds is None:
            bounds = {}
        if not isinstance(bounds, Mapping):
            raise ValueError(f"`bounds` must be a mapping of objective -> epsilon, e.g. "
                             f"`bounds: {{fidelity: 0.9}}`, got {bounds!r}")
        self.bounds: dict[str, float] = {}
        for key, eps in bounds.items():
            self._check_bound_key("bounds", key, specs)
            check_number(f"bounds.{key}", eps, "a finite number (the epsilon for that objective)")
            self.bounds[key] = float(eps)
        # -- epsilon sweep
        if epsilons is None:
            if bounded is not None:
                raise ValueError(f"`bounded: {bounded}` needs `epsilons` (a list of bounds to sweep, "
                                 "e.g. `epsilons: [0.8, 0.9]`); for a single bound use "
                                 f"`bounds: {{{bounded}: EPSILON}}`")
            self.epsilons: list[float] = []
            self.bounded: str | None = None
        else:
            if (isinstance(epsilons, (str, bytes, Mapping)) or not isinstance(epsilons, Sequence)
                    or not epsilons):
                raise ValueError(f"`epsilons` must be a non-empty list of numbers, e.g. "
                                 f"`epsilons: [0.8, 0.9, 0.95]`, got {epsilons!r}")
            for i, eps in enumerate(epsilons):
                check_number(f"epsilons[{i}]", eps, "a finite number")
            if bounded is None:
                others = [k for k in specs if k != minimise and k not in self.bounds]
                if len(others) != 1:
                    raise ValueError("`epsilons` needs `bounded`: the objective they bound (one of "
                                     f"{', '.join(others) or 'none'}), e.g. `bounded: fidelity`")
                bounded = others[0]
            self._check_bound_key("bounded", bounded, specs)
            if bounded in self.bounds:
                raise ValueError(f"`bounded: {bounded}` is also in `bounds`; sweep it with "
                                 "`epsilons` or fix it in `bounds`, not both")
            self.epsilons = [float(e) for e in epsilons]
            self.bounded = bounded
        check_number("n_initial", n_initial, "an integer >= 0 (e.g. `n_initial: 8`)", 0, integer=True)
        check_number("candidates", candidates, "an integer >= 1 (e.g. `candidates: 2048`)", 1,
                     integer=True)
        check_number("max_retries", max_retries, "a positive integer", 1, integer=True)
        self.n_initial, self.candidates, self.max_retries = n_initial, candidates, max_retries
        self._specs = specs
        self._decisions = list(self.space.decisions())
        self._counts = [d.count for d in self._decisions]
        self._cat_dims = [i for i, d in enumerate(self._decisions)
                          if isinstance(d, Categorical) and d.count > 1]
        self._all: np.ndarray | None = None  # the enumerated space (index rows), when small
        self._all_archs: list[Architecture] = []
        # search state (all of it in state_dict)
        self._seen = SeenIds()
        self._obs: dict[str, dict[str, Any]] = {}  # arch id -> observation (insertion order)
        self._pending: list[str] = []
        self._cycle = 0
        self._n_random = 0

    def _check_bound_key(self, param: str, key: Any, specs: dict) -> None:
        if not isinstance(key, str) or key not in specs:
            raise ValueError(f"`{param}` must name the experiment's objectives "
                             f"({', '.join(specs)}), got {key!r}")
        if key == self.minimise:
            raise ValueError(f"`{param}` names {key!r}, the objective being optimised "
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
    def tell(self, trials: Sequence[Trial]) -> None:
        for t in trials:
            self._seen.add(t.arch.id)
            if t.status == "running":
                continue
            if t.arch.id in self._pending:
                self._pending.remove(t.arch.id)
            x = self.space.to_indices(t.arch)
            if x is None:
                continue
            values = {} if t.status == "failed" else {
                k: float(v) for k, v in t.values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            feasible = False if t.status == "failed" else t.feasible
            self._obs[t.arch.id] = {"x": x, "values": values, "status": t.status,
                                    "feasible": feasible}

    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        models = None
        while len(out) < n:
            n_obs = sum(1 for o in self._obs.values() if self.minimise in o["values"])
            if self._n_random < self.n_initial or n_obs < 2:
                arch = self._random()
                if arch is None:
                    break
                self._n_random += 1
            else:
                if models is None:
                    models = self._fit()
                target = self._targets()[self._cycle % len(self._targets())]
                arch = self._propose(models, target, {a.id for a in out})
                if arch is None:
                    break
                self._cycle += 1
            self._seen.add(arch.id)
            self._pending.append(arch.id)
            out.append(arch)
        return out

    def _random(self) -> Architecture | None:
        misses = 0
        while misses < self.max_retries:
            try:
                arch = self.space.sample(self.rng)
            except RuntimeError:
                return None
            if arch.id in self._seen or self.space.to_indices(arch) is None:
                misses += 1
                continue
            return arch
        # maybe the space is nearly exhausted: take the first unseen one, if it is small
        rows = self._enumerated()
        if rows is not None:
            for arch in self._all_archs:
                if arch.id not in self._seen:
                    return arch
        return None

    # -- the model -------------------------------------------------------
    def _fit(self) -> dict[str, Any]:
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
                data = [(o["x"], o["values"][key]) for o in self._obs.values()
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

    def _scorer(self, models: dict[str, Any], target: list[tuple[str, str, float]]):
        """The acquisition for one target: rows of indices -> log scores (numpy)."""
        import torch
        from botorch.acquisition import LogExpectedImprovement

        feasible = [o["values"][self.minimise] for o in self._obs.values()
                    if self.minimise in o["values"] and o["status"] == "complete"
                    and self._satisfies(o["values"], o["feasible"], target)]
        terms = [(models[k], op, b) for k, op, b in target if k in models]
        maximize = self.direction == "max"
        logei = None
        if feasible or not terms:
            pool = feasible or [o["values"][self.minimise] for o in self._obs.values()
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
        if not self.space.is_finite() or self.space.size > self.candidates:
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

    def _propose(self, models: dict[str, Any], target, chosen: set[str]) -> Architecture | None:
        if self.minimise not in models:
            return self._random()
        score = self._scorer(models, target)
        rows = self._enumerated()
        if rows is not None:
            ids = self._all_archs
            keep = [i for i, a in enumerate(ids) if a.id not in self._seen and a.id not in chosen]
            if not keep:
                return None
            s = score(rows[keep])
            return ids[keep[int(np.argmax(s))]]
        return self._local_search(score, chosen)

    def _local_search(self, score, chosen: set[str]) -> Architecture | None:
        """Hill-climbing on the acquisition from random and the best observed
        architectures, over the space's :meth:`~nasframe.space.SearchSpace.neighbours`."""
        scored: dict[str, tuple[float, Architecture]] = {}
        starts: list[Architecture] = []
        observed = sorted((o for o in self._obs.values() if self.minimise in o["values"]),
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
        best = [(v, a) for v, a in scored.values() if a.id not in self._seen and a.id not in chosen]
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
        return {"rng": self.rng_state(), "seen": self._seen.to_list(),
                "observations": [{"id": k, **v} for k, v in self._obs.items()],
                "pending": list(self._pending), "cycle": self._cycle, "n_random": self._n_random}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        self._seen = SeenIds(state.get("seen", ()))
        width = len(self._decisions)
        self._obs = {}
        for o in state.get("observations", []):
            if len(o["x"]) != width:
                raise ValueError(f"the saved 'eps_bo' state has {len(o['x'])} decisions per "
                                 f"architecture but search space '{self.space.name}' now has "
                                 f"{width}; the space changed since the run was saved: start a "
                                 "new run")
            self._obs[o["id"]] = {"x": [int(v) for v in o["x"]],
                                  "values": {k: float(v) for k, v in o["values"].items()},
                                  "status": o["status"], "feasible": o["feasible"]}
        self._pending = list(state.get("pending", []))
        self._cycle = int(state.get("cycle", 0))
        self._n_random = int(state.get("n_random", 0))
