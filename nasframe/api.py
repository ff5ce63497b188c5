"""The Python API: experiments from YAML or a dict, runs, results as DataFrames.

The top layer of the core (nothing in ``nasframe`` imports it but the package
itself)::

    import nasframe

    exp = nasframe.Experiment.from_yaml("examples/quickstart.yaml")   # or .from_dict({...})
    run = exp.run(out="runs/quickstart")      # to the end of the budget
    run.trials()                              # every trial: a pandas DataFrame
    run.front(); run.pick(); run.export()
    nasframe.load_run("runs/quickstart").resume()

See docs/api.md.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nasframe import experiment as _experiment
from nasframe.errors import ConfigError
from nasframe import results as _results
from nasframe.export import export_run
from nasframe.runner import Runner
from nasframe.study import Study
from nasframe.trial import Trial


class Experiment(_experiment.Experiment):
    """An experiment resolved against the installed plugins (and those registered in
    this process), checked as ``nasframe validate`` checks it, ready to run."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        """Read, resolve and check an experiment file (what ``nasframe validate`` does);
        a ConfigError lists every problem, with the field and the fix."""
        from nasframe.experiment import checked_config
        from nasframe.safeyaml import load_yaml_file

        cfg = checked_config(load_yaml_file(path, "experiment file"), str(path))
        exp = cls.from_config(cfg, source=str(path))
        exp.text = Path(path).read_text(encoding="utf-8")
        return exp

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Experiment:
        """The same from a mapping with the fields of an experiment file."""
        import yaml

        from nasframe.experiment import checked_config

        exp = cls.from_config(checked_config(data, source), source=source)
        try:
            exp.text = yaml.safe_dump(data, sort_keys=False)
        except yaml.YAMLError:
            exp.text = ""
        return exp

    def study(self, out: str | Path | None = None, *, load_if_exists: bool = False,
              quiet: bool = True) -> Study:
        """Open the run in ``out`` (default: the experiment's ``output``, else
        ``runs/<name>``) for ask/tell, enqueue and optimize (Optuna's ``create_study``).
        ``load_if_exists``: continue the run already there (its config must match this
        experiment but for budget, executor and timeouts) instead of refusing it."""
        run_dir = self.cfg.run_dir(out)
        if (run_dir / "trials.db").exists():
            if not load_if_exists:
                raise ConfigError(
                    f"{run_dir} already holds a run; continue it with "
                    f"exp.study({str(run_dir)!r}, load_if_exists=True) (or exp.run(..., "
                    f"load_if_exists=True), nasframe.load_run({str(run_dir)!r}).resume()), or "
                    "give another out=")
            runner = Runner.resume(run_dir, quiet=quiet, config=self.cfg, source=str(run_dir))
        else:
            runner = Runner.start(self.cfg, run_dir, self.text, quiet=quiet, experiment=self)
        return Study(runner)

    def run(self, out: str | Path | None = None, *, n_trials: int | None = None,
            timeout: float | None = None,
            callbacks: Iterable[Callable[[Study, Trial], Any]] = (), quiet: bool = True,
            export: bool = False, load_if_exists: bool = False) -> Run:
        """Run the search in ``out`` (default: the experiment's ``output``, else
        ``runs/<name>``) and return the :class:`Run`: to the end of the budget, or
        ``n_trials`` search trials and/or ``timeout`` seconds (they replace the budget for
        this call). ``callback(study, trial)`` runs after every finished trial (raise
        :class:`nasframe.StopStudy` to end early). ``load_if_exists`` continues a run
        already in ``out``. ``export=True`` also writes the CSV/JSON/plots and front files,
        as ``nasframe run`` does. Ctrl-C stops it with every finished trial stored."""
        with self.study(out, load_if_exists=load_if_exists, quiet=quiet) as study:
            study.optimize(n_trials=n_trials, timeout=timeout, callbacks=callbacks)
            run_dir = study.run_dir
        if export:
            export_run(run_dir)
        return load_run(run_dir)


class Run(_results.Run):
    """A run directory: its trials, front and pick (read when opened; the run may be live),
    and the export and resume of ``nasframe export`` / ``nasframe resume``."""

    def export(self, out: str | Path | None = None) -> dict[str, Path]:
        """Write ``trials.csv``, ``pareto.json``, ``pareto.png``, ``hypervolume.png`` and
        ``front/<member>.yaml`` per front member and the pick (into the run directory, or
        ``out``); returns their paths by name."""
        return export_run(self.run_dir, out)

    def resume(self, *, n_trials: int | None = None, timeout: float | None = None,
               callbacks: Iterable[Callable[[Study, Trial], Any]] = (), quiet: bool = True,
               retry_failed: bool = False, export: bool = False) -> Run:
        """Continue this run to the end of its budget (what ``nasframe resume`` does), or for
        ``n_trials`` more search trials and/or ``timeout`` seconds, and return it reloaded.
        ``export=True`` also writes the CSV/JSON/plots and front files, as
        :meth:`Experiment.run` does. A live run there is refused (ConfigError naming its
        process)."""
        runner = Runner.resume(self.run_dir, quiet=quiet, retry_failed=retry_failed)
        with Study(runner) as study:
            study.optimize(n_trials=n_trials, timeout=timeout, callbacks=callbacks)
        if export:
            export_run(self.run_dir)
        return Run(self.run_dir)

    def study(self, *, quiet: bool = True) -> Study:
        """This run opened for ask/tell, enqueue and optimize (locked until closed)."""
        return Study(Runner.resume(self.run_dir, quiet=quiet))


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``nasframe run`` or :meth:`Experiment.run`."""
    return Run(run_dir)
