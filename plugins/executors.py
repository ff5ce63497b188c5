"""Built-in executors: ``inline`` (the driver's process) and ``process`` (a local pool)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

from nasframe.executor import Executor, Job, failed
from nasframe.pool import WorkerPool
from nasframe.trial import Trial


class TrialTimeout(BaseException):
    """Raised in the driver's main thread when an inline trial runs out of time
    (a BaseException, so the evaluation's own error handling lets it through)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in the main thread after ``seconds`` (SIGALRM).

    Python code is interrupted between bytecodes; a single long call into C (one
    huge convolution) finishes first. Without a limit, off the main thread or
    without SIGALRM (Windows), nothing is enforced."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TrialTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class InlineExecutor(Executor):
    """Evaluates trials one after another in the driver's process (the default).

    Uses the driver's experiment directly: nothing is pickled, the prepared
    artifacts are shared, and errors surface with their full traceback under
    ``--debug``. ``workers`` only sets the default batch size. ``trial_timeout``
    interrupts Python code (SIGALRM, main thread only); a trial that kills the
    process (``os._exit``, a segfault) takes the run with it: resume it, and the
    trial counts an attempt. Use ``process`` for plugins that may crash.
    """

    in_process = True

    name = "inline"

    def start(self, job: Job) -> None:
        self._job = job

    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        exp, ctx, limit = self._job.experiment, self._job.context, self._job.trial_timeout
        out = []
        for t in trials:
            try:
                with time_limit(limit):
                    out.append(exp.evaluate(t, ctx))
            except TrialTimeout:
                out.append(failed(t, "timeout", f"timed out after {limit:g} s"))
        return out


class ProcessExecutor(Executor):
    """A local pool of ``workers`` spawned processes (:class:`nasframe.pool.WorkerPool`).

    Each worker rebuilds the experiment from its configuration once and loads
    the artifacts the driver prepared. A worker that dies fails only its trial
    ("worker died, exit code N") and is replaced; a trial past
    ``trial_timeout`` has its worker killed. Worth it when one evaluation takes
    seconds and the objectives do not already use every core (set
    ``torch.set_num_threads`` low in such objectives, or use fewer workers), and
    for plugins that may crash.
    """

    name = "process"
    _pool: WorkerPool | None = None

    def start(self, job: Job) -> None:
        self._job = job
        self._pool = WorkerPool(self.workers, initializer=job.warm)

    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        outcomes = self._pool.run(self._job.remote, list(trials), timeout=self._job.trial_timeout)
        out = []
        for t, o in zip(trials, outcomes):
            if o.status == "ok":
                out.append(o.value)
            elif o.status == "died":
                out.append(failed(t, "died", f"worker died, {o.message}"))
            elif o.status == "timeout":
                out.append(failed(t, "timeout", o.message + " (its worker was stopped)"))
            else:
                out.append(failed(t, "exception", f"worker error: {o.message}"))
        return out

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
