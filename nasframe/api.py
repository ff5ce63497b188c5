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

from pathlib import Path
from typing import Any

from nasframe import experiment as _experiment
from nasframe import results as _results
from nasframe.export import export_run
from nasframe.runner import Runner


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

    def run(self, out: str | Path | None = None, *, quiet: bool = True,
            export: bool = False) -> Run:
        """Run the search to the end of its budget in ``out`` (default: the experiment's
        ``output``, else ``runs/<name>``) and return the :class:`Run`.
        ``export=True`` also writes the CSV/JSON/plots and front files, as ``nasframe run``
        does. Ctrl-C stops it with every finished trial stored: ``load_run(out).resume()``
        continues."""
        run_dir = self.cfg.run_dir(out)
        runner = Runner.start(self.cfg, run_dir, self.text, quiet=quiet, experiment=self)
        runner.run()
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

    def resume(self, *, quiet: bool = True, retry_failed: bool = False) -> Run:
        """Continue this run to the end of its budget (what ``nasframe resume`` does) and
        return it reloaded. A live run there is refused (ConfigError naming its process)."""
        Runner.resume(self.run_dir, quiet=quiet, retry_failed=retry_failed).run()
        return Run(self.run_dir)


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory written by ``nasframe run`` or :meth:`Experiment.run`."""
    return Run(run_dir)
