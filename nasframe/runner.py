"""The search loop: ask -> evaluate -> store -> tell, resumable at any point.

A run survives its trials: a trial that raises, returns garbage, kills its
worker or runs past ``trial_timeout`` fails alone, with the reason, and the
search goes on. One process writes a run (:class:`~nasframe.lock.RunLock`),
stamping its running trials with a heartbeat. Stopped by Ctrl-C or SIGTERM,
it marks its in-flight trials ``interrupted`` (they re-run on resume without
counting an attempt); killed outright, its running trials count an attempt
and re-run, up to ``max_attempts``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from nasframe import lifeline, stopping
from nasframe.analysis import front_stats
from nasframe.architecture import Architecture
from nasframe.config import ExperimentConfig, config_from_dict
from nasframe.errors import ConfigError, RunError, Terminated
from nasframe.executor import Executor, Job, failed
from nasframe.experiment import Experiment, trial_seed
from nasframe.history import TrialHistory
from nasframe.lock import RunLock
from nasframe.objective import Value
from nasframe.progress import plain as plain_progress
from nasframe.pruning import peer_record
from nasframe.progress import search_progress
from nasframe.progress import status as progress_status
from nasframe.store import Heartbeat, StoreLost, TrialStore
from nasframe.strategy import Strategy, state_entry
from nasframe.strategy import restore as strategy_restore
from nasframe.trial import Trial
from nasframe.worker import remote_call, warm_call

MIN_TRIALS_FOR_FAILURE_STOP = 5
MAX_CONSECUTIVE_DUPLICATES = 1000
#: experiment fields a resume may change (dotted prefixes); anything else changes the search
SAFE_CHANGES = ("budget", "executor", "trial_timeout", "max_attempts", "max_failure_fraction",
                "output", "name")


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    trials: int
    failed: int
    front: int
    hypervolume: float
    stopped_because: str
    #: reference architectures evaluated beside the search (outside the trial budget)
    references: int = 0


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: d}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(safe, refused) differences between two experiment configs, one line each."""
    a, b = _flatten(old), _flatten(new)
    safe, refused = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        if any(key == p or key.startswith(p + ".") for p in SAFE_CHANGES):
            safe.append(line)
        else:
            refused.append(line)
    return safe, refused


# ---------------------------------------------------------------- runner
class Runner:
    """Drives one run directory. Use :meth:`start` for a new run, :meth:`resume` to continue.

    The run's lock is taken when the runner is made and released when
    :meth:`run` ends (or by :meth:`close`)."""

    def __init__(self, exp: Experiment, store: TrialStore, run_dir: Path,
                 history: TrialHistory, strategy: Strategy, lock: RunLock,
                 quiet: bool = False, console: Console | None = None):
        self.exp = exp
        self.cfg = exp.cfg
        self.store = store
        self.run_dir = run_dir
        self.history = history
        self.strategy = strategy
        self.lock = lock
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.ctx = exp.context(run_dir, quiet=quiet, console=self.console)
        self._elapsed0 = float(store.get_meta("elapsed", 0.0))
        self._t0 = time.time()
        self._inflight: list[Trial] = []
        #: trials finished and failed since this process started (the failure-fraction stop)
        self.started_done = 0
        self.started_failed = 0
        #: messages for the user (lock take-over, applied changes)
        self.notices: list[str] = [n for n in (lock.notice(),) if n]
        # id -> finished trial, to answer duplicates from the store
        self.done: dict[str, Trial] = {}
        #: trial number -> what a pruner of later trials sees of it (:mod:`nasframe.pruning`)
        self._peers: dict[int, dict] = {}
        self._reports = any(o.reports_intermediate for o in exp.objectives.values())
        self.asked = set()
        self._call_start, self._call_done = time.time(), 0
        #: architectures to evaluate before the strategy's proposals (``enqueue``), stored
        self.queue: list[Architecture] = [Architecture(a) for a in store.get_meta("queue", [])]
        for t in self.history.trials():
            if t.status not in ("running", "failed"):
                self.done.setdefault(t.arch.id, t)
            self._note_peer(t)

    # -- construction ----------------------------------------------------
    @classmethod
    def start(cls, cfg: ExperimentConfig, run_dir: str | Path, config_text: str = "",
              quiet: bool = False, source: str = "<config>", console: Console | None = None,
              experiment: Experiment | None = None) -> Runner:
        exp = experiment if experiment is not None else Experiment.from_config(cfg, source=source)
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: exists and is not a directory; choose a run directory "
                              "with --out DIR")
        if not (run_dir / "trials.db").exists():
            from nasframe.export import check_run_dir

            check_run_dir(run_dir)       # user files there: refuse now, not after the search
        lock = _lock(run_dir)          # a live run there: exit 2 naming its process
        try:
            store = TrialStore.create(run_dir, cfg.to_dict(), config_text)
            store.set_meta("directions", {s.key: s.direction for s in exp.specs})
        except BaseException:
            lock.release()
            raise
        history = TrialHistory()
        return cls(exp, store, run_dir, history, exp.make_strategy(history), lock, quiet, console)

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False, console: Console | None = None,
               config: ExperimentConfig | None = None, retry_failed: bool = False,
               source: str = "<config>") -> Runner:
        """Continue a run. ``config`` (e.g. the edited experiment file) may change what is
        safe to change (budget, time, executor, workers, trial_timeout, max_attempts,
        max_failure_fraction); any other difference is refused with the reason.
        ``retry_failed`` re-runs every failed trial once more."""
        run_dir = Path(run_dir)
        TrialStore.open(run_dir, read_only=True).close()       # a clear error for a bad dir
        lock = _lock(run_dir)
        try:
            store = TrialStore.open(run_dir)
            stored = config_from_dict(store.config, f"{run_dir}/trials.db (config snapshot)")
            applied: list[str] = []
            if config is not None:
                safe, refused = config_changes(stored.to_dict(), config.to_dict())
                if refused:
                    raise ConfigError(*(f"{source}: {line}: changes the search the stored trials "
                                        "belong to; undo it, or start a new run with --out"
                                        for line in refused))
                if safe:
                    changes = store.get_meta("config_changes", [])
                    store.set_meta("config_changes", changes + [{"at": time.time(), "changes": safe}])
                    store.set_meta("config", config.to_dict())
                    applied = safe
                    stored = config
            exp = Experiment.from_config(stored, source="config snapshot")
            history = TrialHistory(store.trials())
            strategy = exp.make_strategy(history)
            snapshot, deltas = store.strategy_journal()
            strategy_restore(strategy, snapshot, deltas)
        except BaseException:
            lock.release()
            raise
        runner = cls(exp, store, run_dir, history, strategy, lock, quiet, console)
        runner.notices += [f"applied: {line}" for line in applied]
        runner.retry_failed = retry_failed
        return runner

    retry_failed = False

    # -- accounting ------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self._elapsed0 + (time.time() - self._t0)

    def search_trials_done(self) -> int:
        return sum(1 for t in self.history.trials() if t.status != "running" and not t.is_reference)

    def _budget_left(self, done: int) -> int | None:
        """Trials still allowed (None: unlimited), 0 when the budget is spent."""
        if self.limit_trials is not None or self.limit_time is not None:
            # this call's limits replace the experiment's budget (Optuna's n_trials/timeout)
            if self.limit_time is not None and time.time() - self._call_start >= self.limit_time:
                return 0
            return (None if self.limit_trials is None
                    else max(0, self.limit_trials - (done - self._call_done)))
        b = self.cfg.budget
        if b.time is not None and self.elapsed >= b.time:
            return 0
        return None if b.trials is None else max(0, b.trials - done)

    # -- the loop --------------------------------------------------------
    def run(self) -> RunSummary:
        """Run to the end of the budget (or of this call's ``limit_trials``/``limit_time``),
        then close the run (store and lock)."""
        with stopping.watch():     # a Ctrl-C stops the run; an objective's own interrupt fails its trial
            try:
                self.open_session()
                return self._loop(self._executor)
            except (KeyboardInterrupt, Terminated):
                self.mark_inflight()
                raise
            finally:
                self.close()

    # -- a session: the prepared experiment, a started executor, the heartbeat ----------
    _executor: Executor | None = None
    _heartbeat: Heartbeat | None = None

    def open_session(self) -> Executor:
        """Prepare the experiment and start the executor (once; :meth:`close` ends it)."""
        if self._executor is not None:
            return self._executor
        lifeline.tie_children()    # what objectives fork dies with the driver
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.store.path).start()
        with progress_status(self.console, "preparing search space and objectives",
                             disable=self.quiet):
            self.exp.prepare(self.ctx)
        executor = self.exp.make_executor()
        config = self.cfg.to_dict()
        blob = self.exp.plugins_payload() if not executor.in_process else None
        executor.start(Job(self.exp, self.ctx, config, self.run_dir,
                           remote_call(config, self.run_dir, blob), self.cfg.trial_timeout,
                           warm_call(config, self.run_dir, blob)))
        self._executor = executor
        return executor

    def mark_inflight(self) -> None:
        """Trials in flight were stopped by an interruption: they re-run on resume."""
        if self._inflight and self.store.lost is None:
            self.store.mark([t.number for t in self._inflight], "interrupted")
        self._inflight = []

    def close(self) -> None:
        """Stop the executor and the heartbeat, save the run time, close the store and
        release the run's lock (once)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        try:
            if self.store.lost is None:
                self.store.set_meta("elapsed", self.elapsed)
        except StoreLost:
            pass                    # the error that stops the run says what happened
        finally:
            self.store.close()      # the last writer checkpoints the WAL into trials.db
            self.lock.release()

    # -- what one call may do (the Python API: n_trials, timeout, callbacks) ------------
    #: search trials this call may still run (None: the budget decides)
    limit_trials: int | None = None
    #: seconds this call may run (None: the budget decides)
    limit_time: float | None = None
    #: ``callback(trial)`` after each finished search trial
    callbacks: Sequence[Any] = ()
    #: trial numbers asked through the Python API and not told yet (not re-run here)
    asked: set[int]
    #: set by :meth:`stop`: the loop ends after the batch in flight
    stop_requested = False

    def stop(self) -> None:
        """End the search after the trials in flight (from a callback, say)."""
        self.stop_requested = True

    def _evaluate(self, executor: Executor, trials: list[Trial]) -> list[Trial]:
        """Record, evaluate (re-running trials whose worker died, up to max_attempts),
        store, and tell the strategy."""
        if not trials:
            return []
        self.history.record(trials)
        self.store.start(trials, self._state())
        return self._finish(self._run_trials(executor, trials))

    def _run_trials(self, executor: Executor, trials: list[Trial]) -> list[Trial]:
        """Evaluate recorded running trials on ``executor``, re-running those whose worker
        died (up to max_attempts); the finished trials, in order (not stored yet)."""
        self._inflight = list(trials)
        if self._reports:            # what the pruner compares them with, wherever they run
            peers = tuple(self._peers.values())
            trials = [replace(t, peers=peers) for t in trials]
        finished = {t.number: t for t in self._with_jobs(executor.map(trials))}
        retry = [t for t in finished.values()
                 if t.failure == "died" and t.attempt < self.cfg.max_attempts]
        while retry:
            again = [replace(t, status="running", attempt=t.attempt + 1, started=time.time(),
                             error=None, failure=None) for t in retry]
            self.store.start(again)
            for t in self._with_jobs(executor.map(again)):
                finished[t.number] = t
            retry = [t for t in finished.values()
                     if t.failure == "died" and t.attempt < self.cfg.max_attempts
                     and t.number in {a.number for a in again}]
        return [_with_attempts(finished[t.number], self.cfg.max_attempts) for t in trials]

    def _finish(self, out: list[Trial]) -> list[Trial]:
        """Store finished trials, tell the strategy, and note them for duplicates/pruning."""
        self._inflight = []
        self.history.record(out)
        self.strategy.tell(out)
        self.store.finish(out, self._state(), self.elapsed)
        for t in out:
            if t.status != "failed":
                self.done.setdefault(t.arch.id, t)
            self._note_peer(t)
        return out

    def _note_peer(self, t: Trial) -> None:
        if self._reports and t.intermediate:
            record = peer_record(t)
            if record is not None:
                self._peers[t.number] = record

    def _with_jobs(self, trials: list[Trial]) -> list[Trial]:
        """Finish the trials an executor returned still running, waiting on device jobs:
        submit each job in the driver (its reference stored with the trial at once, so a
        resumed run re-attaches instead of paying again), poll all of them together, and
        complete each trial once its values are in. A job that fails fails its trial."""
        pending = [t for t in trials if t.status == "running"]
        if not pending:
            return trials
        done: dict[int, Trial] = {}
        jobs = {t.number: {k: dict(v) for k, v in t.jobs.items()} for t in pending}
        values = {t.number: dict(t.values) for t in pending}
        provenance = {t.number: dict(t.provenance) for t in pending}
        by_number = {t.number: t for t in pending}

        def fail(number: int, key: str, err: BaseException) -> None:
            t = by_number[number]
            done[number] = dataclasses.replace(
                self.exp.complete(t, "failed", {}, {}, f"objective '{key}': device job: "
                                  f"{type(err).__name__}: {err}", "exception"), jobs=jobs[number])

        for t in pending:
            for key, entry in jobs[t.number].items():
                if "request" not in entry or "job" in entry or t.number in done:
                    continue
                try:
                    entry["job"] = self.exp.objectives[key].submit(entry["request"], self.ctx)
                except Exception as err:  # noqa: BLE001 - the trial fails, the run goes on
                    fail(t.number, key, err)
                self.store.set_jobs(t.number, jobs[t.number])
        waiting = {(n, k) for n, js in jobs.items() if n not in done
                   for k, e in js.items() if "request" in e and "value" not in e}
        status = None if self.quiet or plain_progress(self.console) else self.console.status(
            f"waiting for {len(waiting)} device job(s)", spinner="dots")
        if status is not None:
            status.start()
        elif not self.quiet:
            self.console.print(f"waiting for {len(waiting)} device job(s)", highlight=False)
        try:
            while waiting:
                for n, key in sorted(waiting):
                    if n in done:
                        waiting.discard((n, key))
                        continue
                    obj = self.exp.objectives[key]
                    try:
                        before = json.dumps(jobs[n][key]["job"], sort_keys=True, default=str)
                        out = obj.collect(jobs[n][key]["job"], self.ctx)
                        if json.dumps(jobs[n][key]["job"], sort_keys=True, default=str) != before:
                            # a later stage submitted (compile -> profile): store its id now
                            self.store.set_jobs(n, jobs[n])
                        if out is None:
                            continue
                        if not isinstance(out, Value):
                            out = Value(out)
                        out = Value(out.value, {**jobs[n][key].get("details", {}), **out.details,
                                                "job": jobs[n][key]["job"]})
                        values[n][key], provenance[n][key] = obj.finish(out, self.ctx)
                    except Exception as err:  # noqa: BLE001 - the trial fails, the run goes on
                        fail(n, key, err)
                    waiting.discard((n, key))
                    jobs[n][key]["value"] = values[n].get(key)
                if status is not None:
                    status.update(f"waiting for {len(waiting)} device job(s)")
                if waiting:
                    time.sleep(min(self.exp.objectives[k].poll_every for _, k in waiting))
        finally:
            if status is not None:
                status.stop()
        for n, t in by_number.items():
            if n not in done:
                done[n] = dataclasses.replace(
                    self.exp.complete(t, "complete", values[n], provenance[n]), jobs=jobs[n])
        return [done.get(t.number, t) for t in trials]

    def _rerun_stopped(self, executor: Executor) -> None:
        """Trials found running: re-run those stopped by an interruption as they were;
        those of a killed run count an attempt (failed once max_attempts is reached)."""
        rerun, give_up = [], []
        for t in self.history.running():
            if t.number in self.asked:
                continue            # asked through the Python API: its caller tells it
            if t.failure == "interrupted" or any("job" in e for e in t.jobs.values()):
                # stopped by an interruption, or while waiting on device jobs it had
                # submitted (its evaluation was done): not the trial's fault, no attempt
                rerun.append(replace(t, started=time.time(), failure=None))
            elif t.attempt >= self.cfg.max_attempts:
                give_up.append(failed(t, "died", f"the run stopped while evaluating it (killed, "
                                      f"or out of memory?) {t.attempt} time(s); not retried "
                                      f"(max_attempts = {self.cfg.max_attempts})"))
            else:
                rerun.append(replace(t, attempt=t.attempt + 1, started=time.time(), failure=None))
        if give_up:
            self.history.record(give_up)
            self.strategy.tell(give_up)
            self.store.finish(give_up, self._state(), self.elapsed)
        self._evaluate(executor, rerun)

    def _retry_failed(self, executor: Executor) -> None:
        """``--retry-failed``: every failed trial (but invalid architectures) once more."""
        again = [replace(t, status="running", attempt=t.attempt + 1, started=time.time(),
                         values={}, provenance={}, error=None, failure=None)
                 for t in self.history.finished() if t.status == "failed" and t.failure != "invalid"]
        self._evaluate(executor, again)

    def _loop(self, executor: Executor) -> RunSummary:
        self.store.set_meta("finished", None)      # set again when this loop ends its budget
        # 1. trials that were running when the last process stopped
        self._rerun_stopped(executor)
        if self.retry_failed:
            self._retry_failed(executor)
        # 2. reference architectures, once per run, outside the budget
        refs = self.exp.space.reference_architectures()
        wanted = self.cfg.references
        if wanted is not True:
            refs = {k: v for k, v in refs.items() if wanted and k in wanted}
        have = {t.origin for t in self.history.trials()}
        todo = [(name, arch) for name, arch in refs.items() if f"reference:{name}" not in have]
        if todo:
            number = self.store.next_number()
            batch = [Trial(number + i, arch, "running", seed=trial_seed(self.cfg.seed, arch),
                           origin=f"reference:{name}", started=time.time())
                     for i, (name, arch) in enumerate(todo)]
            self._count(self._evaluate(executor, batch))
        # 3. the search
        done = self.search_trials_done()
        self._call_done, self._call_start = done, time.time()
        failed_total = sum(1 for t in self.history.trials()
                           if t.status == "failed" and not t.is_reference)
        total = self.cfg.budget.trials
        if self.limit_trials is not None or self.limit_time is not None:
            total = None if self.limit_trials is None else done + self.limit_trials
        batch_size = self.cfg.batch_size or self.cfg.executor.workers
        stopped = "budget"
        duplicates = 0
        last_stats, stats = 0.0, (0, 0.0)
        with search_progress(self.console, disable=self.quiet) as bar:
            task = bar.add_task("search", total=total, completed=done, failed=failed_total,
                                front="-", hv="-")
            while True:
                if self.stop_requested:
                    stopped = "stopped by a callback" if self.callbacks else "stopped"
                    break
                left = self._budget_left(done)
                if left == 0:
                    if self.limit_trials is not None or self.limit_time is not None:
                        stopped = "n_trials" if self.limit_trials is not None and \
                            done - self._call_done >= self.limit_trials else "timeout"
                    else:
                        stopped = "time budget" if self.cfg.budget.time and \
                            self.elapsed >= self.cfg.budget.time else "trial budget"
                    break
                n = batch_size if left is None else min(batch_size, left)
                queued = self._dequeue(n)
                if queued:
                    finished = self._run_batch(executor, queued, origin="enqueued")
                    done += len(finished)
                    failed_total += sum(t.status == "failed" for t in finished)
                    self._count(finished)
                    bar.update(task, completed=done, failed=failed_total)
                    continue
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
                finished = self._run_batch(executor, new)
                done += len(finished)
                failed_total += sum(t.status == "failed" for t in finished)
                self._count(finished)
                if not self.quiet and time.time() - last_stats > 0.5:
                    stats = self._front_stats()
                    last_stats = time.time()
                bar.update(task, completed=done, failed=failed_total, front=stats[0],
                           hv=f"{stats[1]:.4g}")
                self._check_failures()
        front, hv = self._front_stats()
        if stopped in ("trial budget", "time budget", "strategy exhausted") or \
                stopped.startswith("strategy proposed"):
            self.store.set_meta("finished", {"at": time.time(), "because": stopped})
        refs_done = sum(1 for t in self.history.trials() if t.is_reference)
        return RunSummary(self.run_dir, done, failed_total, front, hv, stopped, refs_done)

    def enqueue(self, arch: Architecture) -> None:
        """Evaluate ``arch`` before the strategy's next proposals (stored: a resume keeps it)."""
        self.queue.append(arch)
        self.store.set_meta("queue", [a.to_dict() for a in self.queue])

    def _dequeue(self, n: int) -> list[Architecture]:
        """Up to ``n`` queued architectures not evaluated yet (the queue is stored)."""
        if not self.queue:
            return []
        out: list[Architecture] = []
        while self.queue and len(out) < n:
            arch = self.queue.pop(0)
            if arch.id not in self.done and not any(a.id == arch.id for a in out):
                out.append(arch)
        self.store.set_meta("queue", [a.to_dict() for a in self.queue])
        return out

    def _state(self) -> tuple[str, dict[str, Any] | None]:
        """The strategy's state to store now: a delta, or now and then the whole state."""
        return state_entry(self.strategy, self.store.deltas_since_snapshot, len(self.history))

    def _count(self, finished: Sequence[Trial]) -> None:
        self.started_done += len(finished)
        self.started_failed += sum(t.status == "failed" for t in finished)

    def _front_stats(self) -> tuple[int, float]:
        specs = self.exp.specs
        return front_stats(self.history.trials(), [s.key for s in specs],
                           [s.direction for s in specs], self.cfg.reference_point)

    def _run_batch(self, executor, archs, origin: str | None = None) -> list[Trial]:
        """Number ``archs`` as new trials, evaluate them and call the callbacks."""
        number = self.store.next_number()
        extra = {"origin": origin} if origin is not None else {}
        trials = [Trial(number + i, arch, "running", seed=trial_seed(self.cfg.seed, arch),
                        started=time.time(), **extra) for i, arch in enumerate(archs)]
        finished = self._evaluate(executor, trials)
        for cb in self.callbacks:
            for t in finished:
                cb(t)
        return finished

    def _split_duplicates(self, asked: list[Architecture]) -> tuple[list[Architecture], list[Trial]]:
        new, dup, seen = [], [], set()
        for arch in asked:
            if arch.id in self.done:
                dup.append(self.done[arch.id])
            elif arch.id not in seen:
                seen.add(arch.id)
                new.append(arch)
        return new, dup

    def _check_failures(self) -> None:
        done, failed_n = self.started_done, self.started_failed
        if done < MIN_TRIALS_FOR_FAILURE_STOP or failed_n / done <= self.cfg.max_failure_fraction:
            return
        last = next((t for t in reversed(self.history.trials()) if t.status == "failed"), None)
        detail = last.error.splitlines()[0] if last and last.error else "?"
        raise RunError(
            f"{failed_n} of the {done} trials run since this start failed (more than "
            f"max_failure_fraction={self.cfg.max_failure_fraction}); last error (trial "
            f"{last.number if last else '?'}): {detail}. Every result so far is kept in "
            f"{self.run_dir}; fix the cause and continue with `nasframe resume {self.run_dir}` "
            f"(add --retry-failed to re-run the failed trials), or inspect the errors with "
            f"`nasframe trials {self.run_dir} --status failed`")


def _with_attempts(t: Trial, max_attempts: int) -> Trial:
    """A worker death that used up the attempts says so in its error."""
    if t.failure == "died" and t.error and "attempt" not in t.error:
        return dataclasses.replace(t, error=f"{t.error} (attempt {t.attempt} of {max_attempts})")
    return t


def _lock(run_dir: Path) -> RunLock:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{run_dir}: cannot create the run directory ({err.strerror}); "
                          "choose another with --out") from None
    return RunLock(run_dir).acquire()


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = True,
                   config_text: str = "") -> RunSummary:
    """Run an experiment to the end of its budget (the Python API of ``nasframe run``)."""
    return Runner.start(cfg, run_dir, config_text, quiet=quiet).run()


def resume_run(run_dir: str | Path, quiet: bool = True) -> RunSummary:
    return Runner.resume(run_dir, quiet=quiet).run()
