"""Built-in executors: ``inline`` (the driver's process) and ``process`` (a local pool)."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Sequence

from nasframe.executor import Executor, FuturesExecutor, Job
from nasframe.trial import Trial


class InlineExecutor(Executor):
    """Evaluates trials one after another in the driver's process (the default).

    Uses the driver's experiment directly: nothing is pickled, the prepared
    artifacts are shared, and errors surface with their full traceback under
    ``--debug``. ``workers`` only sets the default batch size.
    """

    name = "inline"

    def start(self, job: Job) -> None:
        self._job = job

    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        exp, ctx = self._job.experiment, self._job.context
        return [exp.evaluate(t, ctx) for t in trials]


class ProcessExecutor(FuturesExecutor):
    """A local pool of ``workers`` processes (started with ``spawn``).

    Each worker rebuilds the experiment from its configuration once and loads
    the artifacts the driver prepared. Worth it when one evaluation takes
    seconds and the objectives do not already use every core (set
    ``torch.set_num_threads`` low in such objectives, or use fewer workers).
    """

    name = "process"

    def make_pool(self) -> cf.Executor:
        return cf.ProcessPoolExecutor(max_workers=self.workers,
                                      mp_context=multiprocessing.get_context("spawn"))
