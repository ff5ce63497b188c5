"""nasframe: plugin-based neural architecture search for edge-efficient models.

The core is generic: it finds search spaces, objectives and strategies through
the ``nasframe`` entry-point group (see :mod:`nasframe.hookspecs`).

The Python API (docs/api.md)::

    exp = nasframe.Experiment.from_yaml("examples/quickstart.yaml")
    run = exp.run(out="runs/quickstart")
    run.trials(); run.front(); run.pick()
    nasframe.load_run("runs/quickstart").resume()
"""
from nasframe import capabilities
from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.context import ArtifactCache, Context, content_hash
from nasframe.errors import ConfigError, EvaluationError, NasframeError, PluginError, RunError
from nasframe.executor import Executor, ExecutorParams, Job
from nasframe.api import Experiment, Run, load_run
from nasframe.history import History
from nasframe.hookspecs import hookimpl
from nasframe.inprocess import objective, register
from nasframe.objective import Objective, Provenance, Value
from nasframe.params import Field, ParamError, Params
from nasframe.pruning import TrialPruned
from nasframe.space import Boolean, Categorical, Decision, Integer, SearchSpace
from nasframe.strategy import Strategy
from nasframe.study import AskedTrial, StopStudy, Study
from nasframe.trust import allow_code
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial

__version__ = "0.1.0"

__all__ = [
    "Architecture", "AskedTrial", "StopStudy", "Study", "ArtifactCache", "Boolean", "Candidate", "Categorical", "ConfigError",
    "Constraint", "Context", "Decision", "EvaluationError", "Executor", "ExecutorParams",
    "Experiment", "Field", "History", "Integer", "Job", "NasframeError", "Objective",
    "ObjectiveSpec", "ParamError", "Params", "PluginError", "Problem", "Provenance", "Run",
    "RunError", "SearchSpace", "Strategy", "Trial", "TrialPruned", "Value", "allow_code",
    "capabilities",
    "content_hash",
    "hookimpl", "load_run", "objective", "register",
]
