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

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nasframe.errors import ConfigError
from nasframe.trial import Constraint

if TYPE_CHECKING:
    from nasframe.plugins import Plugins

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 600, '10m' or '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"cannot read duration {value!r}; write e.g. 600, '10m' or '1h'")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _check_constraint(text: str) -> str:
    Constraint.parse(text)
    return text


ConstraintText = Annotated[str, AfterValidator(_check_constraint)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentConfig(_Model):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveConfig(ComponentConfig):
    #: key in trial values and in constraints; defaults to ``name``
    id: str | None = None
    direction: Literal["min", "max"] | None = None

    @property
    def key(self) -> str:
        return self.id or self.name


class BudgetConfig(_Model):
    trials: int | None = Field(default=None, ge=1)
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
    workers: int = Field(default=1, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(_Model):
    name: str = "experiment"
    seed: int = 0
    search_space: ComponentConfig
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    constraints: list[ConstraintText] = Field(default_factory=list)
    strategy: ComponentConfig = ComponentConfig(name="random")
    budget: BudgetConfig
    executor: ExecutorConfig = ExecutorConfig()
    output: str | None = None
    #: the batch of architectures asked per step (default: the executor's workers)
    batch_size: int | None = Field(default=None, ge=1)
    #: evaluate the space's reference architectures before the search
    references: bool | list[str] = True
    #: stop with an error once this fraction of trials failed (after 5 trials)
    max_failure_fraction: float = Field(default=0.5, gt=0, le=1)
    #: skip the remaining objectives of a trial as soon as a constraint is broken
    skip_infeasible: bool = True
    #: hypervolume reference point per objective key (default: from the data)
    reference_point: dict[str, float] | None = None
    #: torch device handed to spaces and objectives through the context
    device: str = "cpu"
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _unique_keys(self) -> ExperimentConfig:
        seen: set[str] = set()
        for o in self.objectives:
            if o.key in seen:
                raise ValueError(f"objective key '{o.key}' appears twice; give one an `id`")
            seen.add(o.key)
        return self

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(c) for c in self.constraints]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading
def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check the spelling",
}


def _format_errors(err: ValidationError, source: str) -> list[str]:
    lines = []
    for e in err.errors():
        path = _loc(tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p)))
        msg = e["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(e["type"])
        if e["type"] == "extra_forbidden":
            from nasframe.errors import did_you_mean

            parent = _parent_fields(e["loc"])
            hint = did_you_mean(str(e["loc"][-1]), parent) if parent else ""
            msg = f"unknown field{hint}"
            if parent:
                fix = f"allowed here: {', '.join(parent)}"
        bad = "" if e["type"] == "missing" else f" (got {_short(e.get('input'))})"
        lines.append(f"{source}: {path}: {msg}{bad}" + (f"; {fix}" if fix else ""))
    return lines


def _parent_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        nxt = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and schema-check an experiment file (no plugin lookups)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file; check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML at {where}: {problem}; fix the syntax there") from None
    return config_from_dict(data, str(path))


def config_from_dict(data: Any, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields (search_space, objectives, "
                          f"strategy, budget, ...), got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(*_format_errors(err, source)) from None


def check_against_plugins(cfg: ExperimentConfig, plugins: Plugins, source: str = "<config>") -> None:
    """Resolve every component name and parameter; raise one ConfigError listing all problems."""
    from nasframe.registry import check_params

    problems: list[str] = []

    def attempt(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            problems.extend(f"{source}: {p}" for p in err.problems)
            return None

    space_cls = attempt(plugins.search_spaces.get, cfg.search_space.name, "search_space.name")
    if space_cls is not None:
        attempt(check_params, space_cls, cfg.search_space.params, "search_space.params")
    keys = []
    for i, o in enumerate(cfg.objectives):
        cls = attempt(plugins.objectives.get, o.name, f"objectives[{i}].name")
        if cls is not None:
            attempt(check_params, cls, o.params, f"objectives[{i}].params")
        keys.append(o.key)
    for i, c in enumerate(cfg.parsed_constraints):
        if c.key not in keys and c.key not in plugins.objectives:
            from nasframe.errors import did_you_mean

            avail = sorted(set(keys) | set(plugins.objectives.names()))
            problems.append(f"{source}: constraints[{i}]: '{c.key}' is neither an objective of this "
                            f"experiment nor a registered objective{did_you_mean(c.key, avail)} "
                            f"available: {', '.join(avail)}")
    strat_cls = attempt(plugins.strategies.get, cfg.strategy.name, "strategy.name")
    if strat_cls is not None:
        attempt(check_params, strat_cls, cfg.strategy.params, "strategy.params",
                reserved={"problem", "seed"})
    exec_cls = attempt(plugins.executors.get, cfg.executor.name, "executor.name")
    if exec_cls is not None:
        attempt(check_params, exec_cls, cfg.executor.params, "executor.params",
                reserved={"workers"})
    if problems:
        raise ConfigError(*problems)
