"""Experiment files: schema, loading, validation against the installed plugins.

An experiment is YAML (read with ``yaml.safe_load``)::

    name: quickstart
    seed: 0
    search_space: {name: conv_denoiser, params: {input_size: 64}}
    objectives:
      - {name: quick_psnr}                 # direction defaults to the objective's own
      - {name: gmacs, params: {input_shape: [1, 3, 64, 64]}}
    constraints: ["gmacs <= 0.5"]
    strategy: {name: random, params: {}}
    budget: {trials: 20, time: 10m}
    executor: {name: inline}
    output: runs/quickstart

Every problem is reported with its field path, the bad value and the fix.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasframe.errors import ConfigError
from nasframe.params import format_validation_error
from nasframe.trial import Constraint

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


#: the longest duration accepted anywhere (a year): larger values are typos
MAX_DURATION = 366 * 86400


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 600, '10m' or '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"cannot read duration {str(value)[:40]!r}; write e.g. 600, '10m' or '1h'")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration must be a positive, finite number of seconds, e.g. 600, "
                         "'10m' or '1h'")
    if seconds > MAX_DURATION:
        raise ValueError(f"{seconds:g} s is longer than a year; write e.g. '12h' or '7d'")
    return seconds


def _check_constraint(text: str) -> str:
    Constraint.parse(text)
    return text


ConstraintText = Annotated[str, AfterValidator(_check_constraint)]


#: the most trials a budget may ask for
MAX_TRIALS = 10_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ComponentConfig(_Model):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


#: columns of trials.csv / ``nasframe trials`` / ``Run.trials()`` that an objective key would shadow
RESERVED_KEYS = frozenset({
    "number", "id", "origin", "status", "failure", "feasible", "violation", "is_pareto", "rank",
    "pick", "duration_s", "attempt", "seed", "error", "started", "finished", "heartbeat",
    "values", "provenance", "arch", "jobs"})


_DIRECTIONS = {w: "min" for w in ("min", "minimize", "minimise", "minimum", "lower", "low",
                                   "smaller", "decrease")}
_DIRECTIONS.update({w: "max" for w in ("max", "maximize", "maximise", "maximum", "higher",
                                        "high", "larger", "bigger", "increase")})


class ObjectiveConfig(ComponentConfig):
    #: key in trial values and in constraints; defaults to ``name``
    id: str | None = None
    direction: Literal["min", "max"] | None = None

    @property
    def key(self) -> str:
        return self.id or self.name

    @field_validator("direction", mode="before")
    @classmethod
    def _direction_words(cls, v: Any) -> Any:
        if isinstance(v, str):
            word = v.strip().lower()
            if word in _DIRECTIONS:
                return _DIRECTIONS[word]
            raise ValueError(f"{v!r} is not a direction; write min or max (minimize, "
                             "maximize, minimise, maximise, lower, higher are read too)")
        return v

    @model_validator(mode="after")
    def _not_reserved(self) -> ObjectiveConfig:
        key = self.key
        if key in RESERVED_KEYS or key.startswith("arch.") or key.endswith(".provenance"):
            field = "id" if self.id else "name"
            raise ValueError(f"{field} {key!r} is a column of the results (trials.csv, `nasframe "
                             f"trials`); give the objective another `id`, e.g. id: {key}_value")
        return self


class BudgetConfig(_Model):
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS, strict=True)
    time: float | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _some(self) -> BudgetConfig:
        if self.trials is None and self.time is None:
            raise ValueError("give `trials`, `time` or both, e.g. {trials: 50, time: 30m}")
        return self


class ExecutorConfig(_Model):
    name: str = "inline"
    workers: int = Field(default=1, ge=1, le=1024, strict=True)
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(_Model):
    name: str = "experiment"
    #: the search's seed: the same file and seed give the same sequence of trials
    seed: int = Field(default=0, ge=0, le=2**32 - 1, strict=True)
    search_space: ComponentConfig
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    constraints: list[ConstraintText] = Field(default_factory=list)
    strategy: ComponentConfig = ComponentConfig(name="random")
    #: stops trials early on the intermediate values their objectives report (Optuna's
    #: pruners: median, percentile, successive_halving, hyperband, threshold, patient, wilcoxon)
    pruner: ComponentConfig | None = None
    budget: BudgetConfig
    executor: ExecutorConfig = ExecutorConfig()
    output: str | None = None
    #: the batch of architectures asked per step (default: the executor's workers)
    batch_size: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    #: evaluate the space's reference architectures before the search
    references: bool | list[str] = True
    #: stop with an error once this fraction of the trials run since the last start failed
    #: (after 5 of them)
    max_failure_fraction: float = Field(default=0.5, gt=0, le=1)
    #: a trial that runs longer is stopped and failed ("timed out after ...")
    trial_timeout: float | None = None
    #: evaluations of a trial whose worker died (or whose run was killed) before it fails for good
    max_attempts: int = Field(default=2, ge=1, le=100, strict=True)
    #: skip the remaining objectives of a trial as soon as a constraint is broken
    skip_infeasible: bool = True
    #: hypervolume reference point per objective key (default: from the data)
    reference_point: dict[str, float] | None = None
    #: where spaces and objectives train and evaluate (cpu, cuda, cuda:N, mps; see
    #: :mod:`nasframe.accel`); handed to them through the context
    device: str = "cpu"
    #: autocast precision of that work: fp32, bf16 or fp16
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    cache_dir: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # its spelling only (no torch import here); whether this machine has it:
        # nasframe.accel.problems, at validate and before a run
        if not re.fullmatch(r"cpu|(cuda|mps)(:\d{1,3})?", v):
            raise ValueError(f"{v!r} is not a device nasframe trains on; use cpu, cuda, "
                             "cuda:N (N: the GPU's index) or mps")
        return v

    @field_validator("trial_timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _unique_keys(self) -> ExperimentConfig:
        seen: set[str] = set()
        for o in self.objectives:
            if o.key in seen:
                raise ValueError(f"objective key '{o.key}' appears twice; give one an `id`")
            seen.add(o.key)
        return self

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        bad = (not v.strip() or v.strip(".") == "" or any(c in v for c in "/\\\0")
               or any(ord(c) < 32 for c in v))
        if bad:
            raise ValueError(f"{v!r} cannot name a run: without `output` it becomes the folder "
                             "runs/<name>; use letters, digits, '-', '_' or '.', no '/' (e.g. "
                             "name: denoise_small), and put a path in `output:`")
        return v

    @field_validator("output")
    @classmethod
    def _output_path(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("an empty path; give a run directory, e.g. runs/my_search, or "
                             "leave `output` out (runs/<name>)")
        if "$" in v or "%" in v:
            raise ValueError(f"{v!r}: environment variables are not expanded in `output`; write "
                             "the path out (a leading ~ is your home folder), or pass --out")
        return v

    def run_dir(self, out: str | Path | None = None) -> Path:
        """The run directory: ``out`` (``--out``), else ``output``, else ``runs/<name>``;
        a leading ``~`` is the user's home folder."""
        return Path(os.path.expanduser(str(out or self.output or f"runs/{self.name}")))

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(c) for c in self.constraints]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading
def load_config(path: str | Path) -> ExperimentConfig:
    """Read and schema-check an experiment file (no plugin lookups).

    The file is read with :func:`nasframe.safeyaml.load_yaml_file`: bounded in
    size, nesting and alias expansion, duplicate keys refused."""
    from nasframe.safeyaml import load_yaml_file

    return config_from_dict(load_yaml_file(path, "experiment file"), str(path))


def config_from_dict(data: Any, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields (search_space, objectives, "
                          f"strategy, budget, ...), got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(*format_validation_error(err, source + ":", ExperimentConfig)) from None
