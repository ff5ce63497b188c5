"""A conformance suite for plugin authors (pytest).

Subclass the contract for your component in a test module; pytest collects
the subclass when its name starts with ``Test``::

    from nasframe.testing import SearchSpaceContract

    class TestMySpace(SearchSpaceContract):
        def make_space(self):
            return MySpace(preset="tiny")

``ObjectiveContract`` needs ``make_objective`` and, when the objective
requires capabilities :class:`ToySpace` lacks, ``make_space`` returning a
space that provides them; ``StrategyContract`` needs ``make_strategy(problem,
seed, history)``; ``ExecutorContract`` needs ``make_executor(workers)`` and
``make_config()``. Each test states one rule of the contract.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from nasframe import capabilities
from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.context import Context
from nasframe.executor import Executor, Job
from nasframe.history import History, TrialHistory
from nasframe.objective import Objective, Provenance
from nasframe.params import Field, Int, Params, describe_params
from nasframe.space import Boolean, Categorical, Integer, SearchSpace
from nasframe.strategy import Strategy
from nasframe.trial import ObjectiveSpec, Problem, Trial


class ToySpace(SearchSpace):
    """A tiny finite space of MLPs (4 -> 2), for testing objectives and strategies."""

    name = "toy"
    input_shape = (4,)

    class Params(Params):
        widths: tuple[Annotated[Int, Field(ge=1, le=4096)], ...] = (2, 4, 8)
        """Hidden widths to choose from."""
        max_depth: Int = Field(3, ge=1, le=64)
        """The most hidden layers."""

    def decisions(self):
        p = self.params
        return [Categorical("width", p.widths), Integer("depth", 1, p.max_depth),
                Boolean("activation")]

    def build(self, arch: Architecture) -> torch.nn.Module:
        layers: list[torch.nn.Module] = []
        width_in = 4
        for _ in range(arch["depth"]):
            layers.append(torch.nn.Linear(width_in, arch["width"]))
            if arch["activation"]:
                layers.append(torch.nn.ReLU())
            width_in = arch["width"]
        layers.append(torch.nn.Linear(width_in, 2))
        return torch.nn.Sequential(*layers)


def _fake_value(arch: Architecture, k: int) -> float:
    return (int(arch.id[2 * k: 2 * k + 6], 16) % 1000) / 10.0


def fake_trials(problem: Problem, archs: Sequence[Architecture], start: int = 0,
                fail_every: int = 0) -> list[Trial]:
    """Finished trials with deterministic pseudo-values (every ``fail_every``-th failed)."""
    out = []
    for i, arch in enumerate(archs):
        if fail_every and (start + i) % fail_every == fail_every - 1:
            out.append(Trial(start + i, arch, "failed", error="synthetic failure"))
            continue
        values = {o.key: _fake_value(arch, k) for k, o in enumerate(problem.objectives)}
        prov = {o.key: Provenance("proxy", "test") for o in problem.objectives}
        out.append(Trial(start + i, arch, "complete", values, prov, feasible=True))
    return out


def plugin_context(run_dir, **kwargs: Any) -> Context:
    """A context like a run's: quiet, with the installed plugins' op-count handles."""
    from nasframe.plugins import get_plugins

    return Context(run_dir=run_dir, quiet=True, op_handles=get_plugins().op_handles.as_dict(),
                   **kwargs)


class StrategyDriver:
    """Drives a strategy as the runner does, for tests of a strategy's behaviour.

    ``ask(n)`` records the proposals in the strategy's history as running
    trials; ``tell(trials)`` records finished trials (an architecture that is
    running takes over that trial's number, any other gets the next free one)
    and tells them. ``reloaded(**params)`` is a resumed instance: a fresh
    strategy over a copy of the history, given this one's state through JSON.
    """

    def __init__(self, strategy: Strategy):
        if not isinstance(strategy.history, TrialHistory):
            raise TypeError("StrategyDriver needs a strategy whose history is a TrialHistory")
        self.strategy = strategy
        self.history: TrialHistory = strategy.history

    def ask(self, n: int) -> list[Architecture]:
        asked = self.strategy.ask(n)
        start = self._next()
        self.history.record(Trial(start + i, a, "running") for i, a in enumerate(asked))
        return asked

    def _next(self) -> int:
        trials = self.history.trials()
        return trials[-1].number + 1 if trials else 0

    def tell(self, trials: Sequence[Trial]) -> list[Trial]:
        import dataclasses

        numbered = []
        for t in trials:
            running = self.history.latest(t.arch.id)
            if running is not None and running.status == "running":
                t = dataclasses.replace(t, number=running.number)
            else:
                t = dataclasses.replace(t, number=self._next())
            self.history.record([t])
            numbered.append(t)
        self.strategy.tell(numbered)
        return numbered

    def reloaded(self, seed: int | None = None, **params: Any) -> StrategyDriver:
        old = self.strategy
        fresh = type(old)(old.problem, seed=old.seed + 99 if seed is None else seed,
                          history=TrialHistory(self.history.trials()),
                          **{**old.params.model_dump(), **params})
        fresh.load_state_dict(json.loads(json.dumps(old.state_dict())))
        return StrategyDriver(fresh)


class SearchSpaceContract:
    """The contract of a :class:`SearchSpace`. Implement :meth:`make_space`."""

    n_samples = 4
    #: enumerate and check every architecture when the space has at most this many
    max_enumerate = 2000

    def make_space(self) -> SearchSpace:
        raise NotImplementedError("return an instance of your search space (a small preset)")

    def _samples(self, space: SearchSpace, seed: int = 0) -> list[Architecture]:
        rng = np.random.default_rng(seed)
        return [space.sample(rng) for _ in range(self.n_samples)]

    def test_is_named_and_concrete(self):
        space = self.make_space()
        assert isinstance(space, SearchSpace)
        assert isinstance(type(space).name, str) and type(space).name
        assert not inspect.isabstract(type(space))

    def test_params_are_typed_and_described(self):
        space = self.make_space()
        assert isinstance(space.params, type(space).Params)
        docs = describe_params(type(space).Params)
        assert all(d.name and d.type for d in docs)
        # the params round-trip through their JSON form (what a run stores)
        assert type(space).Params.model_validate(space.params.to_dict()) == space.params

    def test_decisions_have_unique_names_and_values(self):
        decisions = self.make_space().decisions()
        names = [d.name for d in decisions]
        assert names and len(names) == len(set(names))
        assert all(len(d.values()) >= 1 for d in decisions)

    def test_sampling_is_valid_and_seeded(self):
        space = self.make_space()
        a, b = self._samples(space, 1), self._samples(space, 1)
        assert a == b, "the same seed must give the same samples"
        assert all(space.validate(x) is None for x in a)

    def test_validate_names_the_problem(self):
        space = self.make_space()
        arch = self._samples(space)[0]
        first = space.decisions()[0].name
        reason = space.validate(arch.replace(**{first: "__not_a_value__"}))
        assert reason and first in reason
        reason = space.validate(Architecture({**arch, "__unknown__": 1}))
        assert reason and "__unknown__" in reason

    def test_encode_decode_round_trip(self):
        space = self.make_space()
        for arch in self._samples(space):
            vec = space.encode(arch)
            assert vec.shape == (space.encoding_width,) and np.isfinite(vec).all()
            assert space.decode(vec) == arch

    def test_build_runs_a_forward_pass(self):
        space = self.make_space()
        for arch in self._samples(space)[:2]:
            cand = Candidate(space, arch, seed=0)
            with torch.no_grad():
                y = cand.model(*cand.example_inputs())
            tensors = [y] if isinstance(y, torch.Tensor) else [t for t in _flatten(y)
                                                                  if isinstance(t, torch.Tensor)]
            assert tensors and all(torch.isfinite(t).all() for t in tensors)

    def test_build_is_seeded(self):
        space = self.make_space()
        arch = self._samples(space)[0]
        p1 = [p.detach().clone() for p in Candidate(space, arch, seed=3).model.parameters()]
        p2 = list(Candidate(space, arch, seed=3).model.parameters())
        assert all(torch.equal(x, y) for x, y in zip(p1, p2))

    def test_graph_nodes_carry_attributes(self):
        space = self.make_space()
        g = space.graph(self._samples(space)[0])
        assert g.number_of_nodes() > 0
        for _, attrs in g.nodes(data=True):
            assert {"kind", "channels", "resolution"} <= set(attrs)

    def test_reference_architectures_are_valid(self):
        space = self.make_space()
        for name, arch in space.reference_architectures().items():
            assert isinstance(arch, Architecture)
            assert space.validate(arch) is None, f"reference '{name}': {space.validate(arch)}"

    def test_block_latency_parts_are_listed_variants_that_run(self):
        from nasframe.capabilities import BlockLatencyParts

        space = self.make_space()
        if not isinstance(space, BlockLatencyParts):
            import pytest

            pytest.skip("the space does not declare BlockLatencyParts")
        shape = (1, *space.input_shape)
        variants = space.latency_variants(shape)
        keys = [v.key for v in variants]
        assert keys and len(set(keys)) == len(keys)
        for arch in self._samples(space):
            parts = space.latency_parts(arch, shape)
            assert parts and {p.key for p in parts} <= set(keys)
        for v in variants[:3]:
            with torch.no_grad():
                v.build().eval()(*(torch.rand(s) for s in v.input_shapes))

    def test_enumeration_is_valid_and_unique(self):
        space = self.make_space()
        if space.size > self.max_enumerate:
            import pytest

            pytest.skip(f"space has {space.size} combinations (> max_enumerate)")
        archs = list(space.enumerate())
        assert archs and len({a.id for a in archs}) == len(archs)
        assert all(space.validate(a) is None for a in archs)


def _flatten(obj):
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _flatten(x)
    elif hasattr(obj, "to_tuple"):
        yield from _flatten(obj.to_tuple())
    else:
        yield obj


class ObjectiveContract:
    """The contract of an :class:`Objective`. Implement :meth:`make_objective`
    (and :meth:`make_space` when the objective requires capabilities)."""

    def make_objective(self) -> Objective:
        raise NotImplementedError("return an instance of your objective")

    def make_space(self) -> SearchSpace:
        return ToySpace()

    def _evaluate(self, tmp_path, seed: int = 0):
        space, obj = self.make_space(), self.make_objective()
        ctx = plugin_context(tmp_path)
        space.prepare(ctx, frozenset(obj.requirements()))
        obj.prepare(space, ctx)
        arch = space.sample(np.random.default_rng(seed))
        return obj(Candidate(space, arch, seed=seed), ctx)

    def test_the_space_provides_what_the_objective_requires(self):
        space, obj = self.make_space(), self.make_objective()
        missing = capabilities.missing(space, obj.requirements())
        assert not missing, (f"make_space() returns '{space.name}', which lacks "
                             f"{capabilities.names(missing)}; return a space that provides them")
        assert obj.check_space(space) is None

    def test_declares_name_direction_kind_and_requirements(self):
        obj = self.make_objective()
        assert isinstance(type(obj).name, str) and type(obj).name
        assert obj.direction in ("min", "max")
        assert obj.kind in ("proxy", "measured")
        assert isinstance(obj.params, type(obj).Params)
        assert all(isinstance(c, type) and issubclass(c, capabilities.Capability)
                   for c in obj.requirements())

    def test_returns_a_finite_value_with_provenance(self, tmp_path):
        value, prov = self._evaluate(tmp_path)
        assert isinstance(value, float) and math.isfinite(value)
        assert isinstance(prov, Provenance)
        assert prov.kind == self.make_objective().kind
        assert prov.backend and prov.device
        json.dumps(prov.to_dict(), default=str)

    def test_proxies_are_deterministic(self, tmp_path):
        if self.make_objective().kind != "proxy":
            import pytest

            pytest.skip("measured objectives vary between runs")
        assert self._evaluate(tmp_path)[0] == self._evaluate(tmp_path)[0]


class StrategyContract:
    """The contract of a :class:`Strategy`. Implement :meth:`make_strategy`.

    The tests drive the strategy as the runner does: asked architectures enter
    the history as running trials, then finish (some fail) and are told.
    """

    batch = 3
    steps = 4

    def make_strategy(self, problem: Problem, seed: int, history: History) -> Strategy:
        raise NotImplementedError("return an instance of your strategy for this problem, "
                                  "reading `history`")

    def make_problem(self) -> Problem:
        return Problem(ToySpace(), (ObjectiveSpec("a", "min"), ObjectiveSpec("b", "max")))

    def _drive(self, strategy: Strategy, history: TrialHistory, problem: Problem, steps: int):
        asked_all = []
        for _ in range(steps):
            asked = strategy.ask(self.batch)
            asked_all.append(asked)
            start = len(history)
            history.record(Trial(start + i, a, "running") for i, a in enumerate(asked))
            trials = fake_trials(problem, asked, start, fail_every=5)
            history.record(trials)
            strategy.tell(trials)
        return asked_all

    def test_asks_valid_unseen_architectures(self):
        problem = self.make_problem()
        history = TrialHistory()
        strategy = self.make_strategy(problem, 0, history)
        asked = self._drive(strategy, history, problem, self.steps)
        flat = [a for batch in asked for a in batch]
        assert flat, "the strategy proposed nothing"
        assert all(len(batch) <= self.batch for batch in asked)
        assert all(isinstance(a, Architecture) and problem.space.validate(a) is None for a in flat)
        assert len({a.id for a in flat}) == len(flat), "an architecture was proposed twice"

    def test_same_seed_same_sequence(self):
        problem = self.make_problem()
        h1, h2 = TrialHistory(), TrialHistory()
        a = self._drive(self.make_strategy(problem, 7, h1), h1, problem, self.steps)
        b = self._drive(self.make_strategy(problem, 7, h2), h2, problem, self.steps)
        assert a == b

    def test_state_round_trip_continues_the_same_search(self):
        problem = self.make_problem()
        history = TrialHistory()
        first = self.make_strategy(problem, 1, history)
        self._drive(first, history, problem, 2)
        state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
        # a resumed run: a fresh instance over a history rebuilt from the store
        rebuilt = TrialHistory(history.trials())
        second = self.make_strategy(problem, 999, rebuilt)
        second.load_state_dict(state)
        a = self._drive(first, history, problem, 2)
        b = self._drive(second, rebuilt, problem, 2)
        assert a == b

    def test_accepts_trials_it_did_not_ask_for(self):
        problem = self.make_problem()
        history = TrialHistory()
        strategy = self.make_strategy(problem, 0, history)
        rng = np.random.default_rng(5)
        foreign = list({a.id: a for a in (problem.space.sample(rng) for _ in range(3))}.values())
        told = fake_trials(problem, foreign, 100)
        history.record(told)
        strategy.tell(told)
        asked = strategy.ask(self.batch)
        assert all(problem.space.validate(a) is None for a in asked)
        assert not {a.id for a in asked} & {a.id for a in foreign}, "proposed a told architecture"


#: the executor contract's shared session per contract class (see ExecutorContract._shared)
_SHARED_RUNS: dict[type, tuple] = {}


class ExecutorContract:
    """The contract of an :class:`~nasframe.executor.Executor`.

    Implement :meth:`make_executor` and :meth:`make_config`: an experiment
    (as a dict, like the YAML) whose components every worker can load, i.e.
    installed through entry points, with deterministic (proxy) objectives so
    that values can be compared with an in-process evaluation.
    """

    workers = 2
    batch = 5

    def make_executor(self, workers: int) -> Executor:
        raise NotImplementedError("return an instance of your executor with `workers` workers")

    def make_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            "return an experiment config dict whose components are installed plugins, e.g. "
            "{'search_space': {'name': ...}, 'objectives': [{'name': 'params'}], "
            "'budget': {'trials': 1}}")

    def _setup(self, tmp_path):
        from nasframe.config import config_from_dict
        from nasframe.experiment import Experiment
        from nasframe.worker import remote_call

        cfg = config_from_dict(self.make_config())
        exp = Experiment.from_config(cfg)
        ctx = exp.context(tmp_path, quiet=True)
        exp.prepare(ctx)
        config = cfg.to_dict()
        return exp, ctx, Job(exp, ctx, config, Path(tmp_path),
                             remote_call(config, tmp_path, exp.plugins_payload()))

    def _trials(self, exp, n: int, start: int = 0, seed: int = 0) -> list[Trial]:
        from nasframe.experiment import trial_seed

        rng, archs, seen = np.random.default_rng(seed), [], set()
        for _ in range(100 * n):
            a = exp.space.sample(rng)
            if a.id not in seen:
                seen.add(a.id)
                archs.append(a)
            if len(archs) == n:
                break
        return [Trial(start + i, a, "running", seed=trial_seed(exp.cfg.seed, a), started=time.time())
                for i, a in enumerate(archs)]

    @staticmethod
    def _key(t: Trial):
        return (t.number, t.arch.id, t.status, dict(t.values), t.feasible, t.error)

    def _run(self, tmp_path, batches: Sequence[int]):
        exp, ctx, job = self._setup(tmp_path)
        executor = self.make_executor(self.workers)
        executor.start(job)
        try:
            out, start = [], 0
            for i, n in enumerate(batches):
                trials = self._trials(exp, n, start, seed=i)
                out.append((trials, executor.map(trials)))
                start += n
        finally:
            executor.shutdown()
        return exp, ctx, out

    def test_declares_name_and_workers(self):
        ex = self.make_executor(self.workers)
        assert isinstance(type(ex).name, str) and type(ex).name
        assert ex.workers == self.workers
        assert isinstance(ex.describe(), str)

    def _shared(self, tmp_path):
        """One executor session per contract class, shared by the tests below (each start of
        an executor pays its workers' start-up: torch and the plugins imported per worker):
        batches of ``batch``, 0, 1 and ``batch`` trials, in that order."""
        key = type(self)
        if key not in _SHARED_RUNS:
            _SHARED_RUNS[key] = self._run(tmp_path, [self.batch, 0, 1, self.batch])
        return _SHARED_RUNS[key]

    def test_returns_each_trial_finished_in_input_order(self, tmp_path):
        _, _, out = self._shared(tmp_path)
        for sent, got in out:
            assert [t.number for t in got] == [t.number for t in sent]
            assert [t.arch.id for t in got] == [t.arch.id for t in sent]
            assert all(isinstance(t, Trial) and t.status in ("complete", "infeasible")
                       for t in got), [t.error for t in got]

    def test_values_equal_an_in_process_evaluation(self, tmp_path):
        exp, ctx, out = self._shared(tmp_path)
        for sent, got in out:
            local = [exp.evaluate(t, ctx) for t in sent]
            assert [self._key(t) for t in got] == [self._key(t) for t in local]
            for t in got:
                assert set(t.provenance) == set(t.values)

    def test_an_empty_batch_gives_an_empty_list(self, tmp_path):
        _, _, out = self._shared(tmp_path)
        assert [len(got) for _, got in out] == [self.batch, 0, 1, self.batch]
