"""The search loop: ask -> evaluate -> store -> tell, resumable at any point."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from nasframe.architecture import Architecture
from nasframe.config import ExperimentConfig, config_from_dict
from nasframe.errors import RunError
from nasframe.executor import Executor, Job
from nasframe.experiment import Experiment, trial_seed
from nasframe.pareto import default_reference_point, hypervolume, pareto_mask
from nasframe.plugins import get_plugins
from nasframe.progress import search_progress
from nasframe.store import TrialStore
from nasframe.strategy import Strategy
from nasframe.trial import Trial

MIN_TRIALS_FOR_FAILURE_STOP = 5
MAX_CONSECUTIVE_DUPLICATES = 1000


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    trials: int
    failed: int
    front: int
    hypervolume: float
    stopped_because: str


def front_stats(exp: Experiment, trials: Sequence[Trial], reference_point: dict[str, float] | None
                ) -> tuple[int, float]:
    """(front size, hypervolume) of the finished trials."""
    done = [t for t in trials if t.status in ("complete", "pruned")]
    if not done:
        return 0, 0.0
    keys = [s.key for s in exp.specs]
    dirs = [s.direction for s in exp.specs]
    values = np.array([[t.values.get(k, math.nan) for k in keys] for t in done], dtype=float)
    feasible = np.array([bool(t.feasible) for t in done])
    mask = pareto_mask(values, dirs, feasible)
    if reference_point:
        ref = np.array([reference_point[k] * (1 if d == "min" else -1) for k, d in zip(keys, dirs)])
    else:
        ref = default_reference_point(values[feasible], dirs) if feasible.any() else None
    hv = hypervolume(values[mask], dirs, ref) if ref is not None and mask.any() else 0.0
    return int(mask.sum()), hv


# ---------------------------------------------------------------- runner
class Runner:
    """Drives one run directory. Use :meth:`start` for a new run, :meth:`resume` to continue."""

    def __init__(self, exp: Experiment, store: TrialStore, run_dir: Path, strategy: Strategy,
                 quiet: bool = False, console: Console | None = None):
        self.exp = exp
        self.cfg = exp.cfg
        self.store = store
        self.run_dir = run_dir
        self.strategy = strategy
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.ctx = exp.context(run_dir, quiet=quiet, console=self.console)
        self._elapsed0 = float(store.get_meta("elapsed", 0.0))
        self._t0 = time.time()
        # id -> finished trial, to answer duplicates from the store
        self.done: dict[str, Trial] = {}
        for t in store.trials():
            if t.status != "running":
                self.done.setdefault(t.arch.id, t)

    # -- construction ----------------------------------------------------
    @classmethod
    def start(cls, cfg: ExperimentConfig, run_dir: str | Path, config_text: str = "",
              quiet: bool = False, source: str = "<config>", console: Console | None = None) -> Runner:
        exp = Experiment.from_config(cfg, source=source)
        strategy = cls._make_strategy(exp)
        store = TrialStore.create(run_dir, cfg.to_dict(), config_text)
        store.set_meta("directions", {s.key: s.direction for s in exp.specs})
        return cls(exp, store, Path(run_dir), strategy, quiet, console)

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False, console: Console | None = None) -> Runner:
        store = TrialStore.open(run_dir)
        cfg = config_from_dict(store.config, f"{run_dir}/trials.db (config snapshot)")
        exp = Experiment.from_config(cfg, source="config snapshot")
        strategy = cls._make_strategy(exp)
        state = store.strategy_state()
        if state is not None:
            strategy.load_state_dict(state)
        return cls(exp, store, Path(run_dir), strategy, quiet, console)

    @staticmethod
    def _make_strategy(exp: Experiment) -> Strategy:
        from nasframe.plugins import get_plugins

        reg = get_plugins().strategies
        cls_ = reg.get(exp.cfg.strategy.name, "strategy.name")
        if cls_.requires_finite_space and not exp.space.is_finite():
            raise RunError(f"strategy '{cls_.name}' needs a finite search space; "
                           f"'{exp.space.name}' is not")
        return reg.create(exp.cfg.strategy.name, exp.cfg.strategy.params, where="strategy",
                          problem=exp.problem, seed=exp.cfg.seed)

    # -- accounting ------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self._elapsed0 + (time.time() - self._t0)

    def search_trials_done(self) -> int:
        return sum(1 for t in self.store.trials() if t.status != "running" and not t.is_reference)

    def _budget_left(self, done: int) -> int | None:
        """Trials still allowed (None: unlimited), 0 when the budget is spent."""
        b = self.cfg.budget
        if b.time is not None and self.elapsed >= b.time:
            return 0
        return None if b.trials is None else max(0, b.trials - done)

    # -- the loop --------------------------------------------------------
    def run(self) -> RunSummary:
        executor = None
        try:
            with self.console.status("preparing search space and objectives", spinner="dots") \
                    if not self.quiet else _nullcontext():
                self.exp.prepare(self.ctx)
            executor = get_plugins().executors.create(
                self.cfg.executor.name, self.cfg.executor.params, "executor",
                workers=self.cfg.executor.workers)
            executor.start(Job(self.exp, self.ctx, self.cfg.to_dict(), self.run_dir))
            return self._loop(executor)
        finally:
            if executor is not None:
                executor.shutdown()
            self.store.set_meta("elapsed", self.elapsed)

    def _evaluate(self, executor: Executor, trials: list[Trial]) -> list[Trial]:
        if not trials:
            return []
        self.store.start(trials, self.strategy.state_dict())
        finished = executor.map(trials)
        self.strategy.tell(finished)
        self.store.finish(finished, self.strategy.state_dict(), self.elapsed)
        for t in finished:
            if t.status != "failed":
                self.done.setdefault(t.arch.id, t)
        return finished

    def _loop(self, executor: Executor) -> RunSummary:
        # 1. trials that were running when the last process died run again
        rerun = [replace(t, attempt=t.attempt + 1, started=time.time())
                 for t in self.store.trials("running")]
        self._evaluate(executor, rerun)
        # 2. reference architectures, once per run, outside the budget
        refs = self.exp.space.reference_architectures()
        wanted = self.cfg.references
        if wanted is not True:
            refs = {k: v for k, v in refs.items() if wanted and k in wanted}
        have = {t.origin for t in self.store.trials()}
        todo = [(name, arch) for name, arch in refs.items() if f"reference:{name}" not in have]
        if todo:
            number = self.store.next_number()
            batch = [Trial(number + i, arch, "running", seed=trial_seed(self.cfg.seed, arch),
                           origin=f"reference:{name}", started=time.time())
                     for i, (name, arch) in enumerate(todo)]
            self._evaluate(executor, batch)
        # 3. the search
        done = self.search_trials_done()
        failed = sum(1 for t in self.store.trials() if t.status == "failed" and not t.is_reference)
        total = self.cfg.budget.trials
        batch_size = self.cfg.batch_size or self.cfg.executor.workers
        stopped = "budget"
        duplicates = 0
        last_stats, stats = 0.0, (0, 0.0)
        with search_progress(self.console, disable=self.quiet) as bar:
            task = bar.add_task("search", total=total, completed=done, failed=failed,
                                front="-", hv="-")
            while True:
                left = self._budget_left(done)
                if left == 0:
                    stopped = "time budget" if self.cfg.budget.time and self.elapsed >= self.cfg.budget.time \
                        else "trial budget"
                    break
                n = batch_size if left is None else min(batch_size, left)
                asked = self.strategy.ask(n)
                if not asked:
                    stopped = "strategy exhausted"
                    break
                new, dup = self._split_duplicates(asked)
                if dup:
                    self.strategy.tell(dup)
                    duplicates += len(dup)
                    if not new and duplicates >= MAX_CONSECUTIVE_DUPLICATES:
                        stopped = f"strategy proposed {duplicates} already-evaluated architectures in a row"
                        break
                if not new:
                    continue
                duplicates = 0
                number = self.store.next_number()
                trials = [Trial(number + i, arch, "running", seed=trial_seed(self.cfg.seed, arch),
                                started=time.time()) for i, arch in enumerate(new)]
                finished = self._evaluate(executor, trials)
                done += len(finished)
                failed += sum(t.status == "failed" for t in finished)
                if not self.quiet and time.time() - last_stats > 0.5:
                    stats = front_stats(self.exp, self.store.trials(), self.cfg.reference_point)
                    last_stats = time.time()
                bar.update(task, completed=done, failed=failed, front=stats[0], hv=f"{stats[1]:.4g}")
                self._check_failures(done, failed, finished)
        front, hv = front_stats(self.exp, self.store.trials(), self.cfg.reference_point)
        return RunSummary(self.run_dir, done, failed, front, hv, stopped)

    def _split_duplicates(self, asked: list[Architecture]) -> tuple[list[Architecture], list[Trial]]:
        new, dup, seen = [], [], set()
        for arch in asked:
            if arch.id in self.done:
                dup.append(self.done[arch.id])
            elif arch.id not in seen:
                seen.add(arch.id)
                new.append(arch)
        return new, dup

    def _check_failures(self, done: int, failed: int, finished: list[Trial]) -> None:
        if done < MIN_TRIALS_FOR_FAILURE_STOP or failed / done <= self.cfg.max_failure_fraction:
            return
        last = next((t for t in reversed(self.store.trials()) if t.status == "failed"), None)
        detail = last.error.splitlines()[0] if last and last.error else "?"
        raise RunError(
            f"{failed} of {done} trials failed (more than max_failure_fraction="
            f"{self.cfg.max_failure_fraction}); last error (trial {last.number if last else '?'}): "
            f"{detail}. Every result so far is kept in {self.run_dir}; fix the cause and continue "
            f"with `nasframe resume {self.run_dir}`, or inspect the errors with `nasframe export "
            f"{self.run_dir}` (trials.csv)")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = True,
                   config_text: str = "") -> RunSummary:
    """Run an experiment to the end of its budget (the Python API of ``nasframe run``)."""
    get_plugins()
    return Runner.start(cfg, run_dir, config_text, quiet=quiet).run()


def resume_run(run_dir: str | Path, quiet: bool = True) -> RunSummary:
    return Runner.resume(run_dir, quiet=quiet).run()
