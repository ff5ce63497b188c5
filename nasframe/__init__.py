"""nasframe: plugin-based neural architecture search for edge-efficient models.

The core is generic: it finds search spaces, objectives and strategies through
the ``nasframe`` entry-point group (see :mod:`nasframe.hookspecs`).
"""
from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.context import ArtifactCache, Context, content_hash
from nasframe.errors import ConfigError, EvaluationError, NasframeError, PluginError, RunError
from nasframe.executor import Executor, FuturesExecutor, Job
from nasframe.hookspecs import hookimpl
from nasframe.objective import Objective, Provenance, Value
from nasframe.space import Boolean, Categorical, Decision, Integer, SearchSpace
from nasframe.strategy import Strategy
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial

__version__ = "0.1.0"

__all__ = [
    "Architecture", "ArtifactCache", "Boolean", "Candidate", "Categorical", "ConfigError",
    "Constraint", "Context", "Decision", "EvaluationError", "Executor", "FuturesExecutor",
    "Integer", "Job", "NasframeError", "Objective", "ObjectiveSpec", "PluginError", "Problem", "Provenance", "RunError",
    "SearchSpace", "Strategy", "Trial", "Value", "content_hash", "hookimpl",
]
