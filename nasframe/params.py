"""Typed parameters: every component declares its YAML ``params`` as one pydantic model.

A component (search space, objective, strategy, executor) sets a nested
``Params`` class; the registry validates the YAML ``params`` against it before
the component is made, with the same error form as the experiment file (field
path, bad value, fix, did-you-mean)::

    from nasframe import Objective
    from nasframe.params import Int, Params, Field

    class QuickLoss(Objective):
        name = "quick_loss"

        class Params(Params):
            steps: Int = Field(60, ge=0, le=100_000)
            '''Adam steps before the loss is read.'''

        def evaluate(self, candidate, ctx):
            ... self.params.steps ...

The attribute docstring (or ``Field(description=...)``) is the one line that
``nasframe plugins NAME`` prints. Models are strict about types (``3`` is not
``true``, ``"3"`` is not ``3``), refuse unknown keys, NaN and infinity, and are
frozen. Checks that need more than the params themselves (another objective's
name, the space's decisions) raise :class:`ParamError` from the component's
``__init__``, naming the field.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

from nasframe.errors import InvalidParams, did_you_mean, visible

__all__ = ["Bool", "Component", "Field", "Float", "Int", "MAX_SHAPE_ELEMENTS", "NonNegativeInt",
           "ParamDoc", "ParamError", "Params", "PositiveInt", "Shape", "describe_params",
           "format_validation_error", "parse_params"]

#: the largest example input (elements, batch included) any objective builds
MAX_SHAPE_ELEMENTS = 2 ** 28


def _plain_int(value: Any) -> Any:
    # numpy/torch integers from Python callers count as ints; bools never do
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value) is not int:
        return int(value)
    return value


def _plain_float(value: Any) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, float, int)):
        return float(value)
    return value


#: an integer (not a bool, a float or a string)
Int = Annotated[int, BeforeValidator(_plain_int), Strict()]
#: a finite number (an int is accepted; a bool or a string is not)
Float = Annotated[float, BeforeValidator(_plain_float), Strict()]
#: true or false (not 0/1, not "yes")
Bool = Annotated[bool, Strict()]


def _check_shape(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value:
        raise ValueError("give at least one dimension, batch included, e.g. [1, 3, 64, 64]")
    n = math.prod(value)
    if n > MAX_SHAPE_ELEMENTS:
        raise ValueError(f"{n:,} elements is more than the {MAX_SHAPE_ELEMENTS:,} an input may "
                         "have; use a smaller shape")
    return value


#: an integer >= 1
PositiveInt = Annotated[Int, Field(ge=1)]
#: an integer >= 0
NonNegativeInt = Annotated[Int, Field(ge=0)]
#: a tensor shape, batch included, of at most MAX_SHAPE_ELEMENTS elements
Shape = Annotated[tuple[PositiveInt, ...], AfterValidator(_check_shape)]


class Params(BaseModel):
    """Base of every component's params: strict, frozen, no unknown keys, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True, validate_default=True,
                              arbitrary_types_allowed=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (tuples become lists)."""
        return self.model_dump(mode="json")


class ParamError(ValueError):
    """A bad parameter found by a component's ``__init__`` (it names the field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# ------------------------------------------------------------ error messages
def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        part = part if isinstance(part, int) else visible(str(part))
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a repr must never break an error message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _submodel(ann: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``, ...)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in get_args(ann):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _field_at(model: type[BaseModel] | None, loc: Sequence[Any]):
    """The pydantic FieldInfo at ``loc`` (list indices skipped), or None."""
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _submodel(field.annotation)
    return field


def _fields_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    """The field names of the (sub)model that holds ``loc[-1]``."""
    for part in loc[:-1]:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


_FIXES = {"missing": "add it", "extra_forbidden": "remove it or check the spelling"}


def format_validation_error(err: ValidationError, where: str = "",
                            model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: ``where.field.path: message (got value); fix``.

    Unknown keys get a did-you-mean over the fields allowed at that level.
    """
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or "function-" in p))]
        sub = _loc(loc)
        if where.endswith(":"):      # a file name: "exp.yaml: budget.trials"
            path = f"{where} {sub or '(top level)'}"
        else:
            path = ".".join(x for x in (where, sub) if x) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        fix = _FIXES.get(e["type"])
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc) if model is not None else []
            msg = f"unknown field{did_you_mean(str(loc[-1]), allowed) if allowed else ''}"
            if allowed:
                fix = f"allowed here: {', '.join(allowed)}"
            elif model is not None and len(loc) == 1:
                fix = "this component takes no params"
        if fix is None and model is not None and loc:
            field = _field_at(model, loc)
            if field is not None and not field.is_required() and not isinstance(loc[-1], int):
                value = field.default_factory() if field.default_factory is not None else field.default
                if value is not None and not isinstance(value, BaseModel):
                    fix = f"the default is {_show(value)}"
        bad = "" if e["type"] == "missing" else f" (got {_short(e.get('input'))})"
        lines.append(f"{path}: {msg}{bad}" + (f"; {fix}" if fix else ""))
    return lines


def parse_params(model: type[Params], raw: Any, where: str) -> Params:
    """Validate ``raw`` (a mapping, or already a ``model``) against ``model``; a
    ConfigError with one line per problem otherwise."""
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidParams(f"{where}: expected a mapping of parameters, got {_short(raw)}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise InvalidParams(*format_validation_error(err, where, model)) from None


# --------------------------------------------------------------- components
class Component:
    """What every kind of component shares: typed params and availability.

    ``Params``
        the params model (default: none accepted).
    ``dependencies``
        modules the component imports when used (not at registration); if one
        is missing the component is listed as unavailable, with ``install_hint``.
    ``small_params``
        params of a small instance, used by the conformance suite and docs.
    ``known_as``
        names people coming from other tools type for this component, each with
        how to say it here (``{"nsga2": "ens, or optuna with params: {sampler:
        nsga2}"}``): an unknown name that is one of them gets that hint.
    """

    Params: ClassVar[type[Params]] = Params
    dependencies: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str | None] = None
    small_params: ClassVar[Mapping[str, Any]] = {}
    known_as: ClassVar[Mapping[str, str]] = {}
    params: Params

    def _init_params(self, params: Any, kwargs: dict[str, Any]) -> None:
        """Set ``self.params`` from a Params instance, a mapping and/or keywords."""
        cls = type(self)
        if kwargs:
            base = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
            params = {**base, **kwargs}
        self.params = parse_params(cls.Params, params, f"{cls.__name__} params")

    @classmethod
    def missing_dependencies(cls, deep: bool = False) -> list[str]:
        """The modules in :attr:`dependencies` that cannot be used here: not installed, or
        installed without a library they require (read from the package metadata: cheap);
        with ``deep``, also those whose import fails (each is imported to find out).
        :func:`import_problem` says why."""
        return [mod for mod in cls.dependencies if import_problem(mod, deep)]


_IMPORT_FAILURES: dict[str, str] = {}


def _requirement_problem(module: str) -> str | None:
    """A required distribution of ``module``'s package that is not installed (its metadata's
    Requires-Dist, extras and environment markers applied), e.g. NNI installed with
    ``--no-deps`` without colorama; None when every one is there (or nothing is known)."""
    import importlib.metadata as md

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return None
    top = module.split(".")[0]
    try:     # the distribution named as its module (nni, torch): found without reading them all
        dists = [md.distribution(top).metadata["Name"]]
    except md.PackageNotFoundError:   # e.g. sklearn from scikit-learn: every RECORD read, 1 s
        dists = _packages_distributions().get(top, [])
    for dist_name in dists[:1]:
        try:
            reqs = md.requires(dist_name) or []
        except md.PackageNotFoundError:
            return None
        for text in reqs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                md.version(req.name)
            except md.PackageNotFoundError:
                return (f"installed without {req.name}, which {dist_name} requires (installed "
                        "with --no-deps?)")
    return None


_DISTS: dict[str, list[str]] | None = None


def _packages_distributions() -> dict[str, list[str]]:
    global _DISTS
    if _DISTS is None:
        import importlib.metadata as md

        _DISTS = md.packages_distributions()
    return _DISTS


def import_problem(module: str, deep: bool = True) -> str | None:
    """Why ``module`` cannot be used here: ``"not installed"``; ``"installed without X, which
    ... requires"`` (from its package metadata); with ``deep``, ``"its import fails (Error:
    message)"`` when importing it raises (it is imported to find out, once a process);
    None when it is usable."""
    import importlib
    import importlib.util
    import sys
    import warnings

    if sys.modules.get(module) is not None:
        return None
    if module in _IMPORT_FAILURES:
        return _IMPORT_FAILURES[module]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent missing, or sys.modules[mod] = None
        found = False
    problem = None
    if not found:
        problem = "not installed"
    elif (problem := _requirement_problem(module)) is not None:
        pass
    elif deep:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - whatever the import raises is the reason
            first = (str(err).splitlines() or [""])[0][:200]
            problem = f"its import fails ({type(err).__name__}: {first})"
            _IMPORT_FAILURES[module] = problem
    return problem


# ------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class ParamDoc:
    """One parameter as ``nasframe plugins NAME`` shows it."""

    name: str
    type: str
    default: str
    doc: str
    required: bool


def _type_name(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Annotated:
        return _type_name(get_args(ann)[0])
    if ann is None or ann is type(None):
        return "null"
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "mapping"
        return {"int": "int", "float": "number", "bool": "bool", "str": "string"}.get(
            ann.__name__, ann.__name__)
    if origin is not None:
        args = [a for a in get_args(ann) if a is not Ellipsis]
        name = getattr(origin, "__name__", str(origin))
        if name in ("UnionType", "Union"):
            return " | ".join(_type_name(a) for a in args)
        if name == "Literal":
            return " | ".join(repr(a) for a in args)
        if name in ("tuple", "list", "Sequence"):
            return f"list of {_type_name(args[0])}" if args else "list"
        if name in ("dict", "Mapping"):
            return "mapping"
        return name
    return str(ann).replace("typing.", "")


def _show(value: Any) -> str:
    """A default as YAML would spell it (JSON-like), else its repr."""
    import json

    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def describe_params(model: type[Params]) -> list[ParamDoc]:
    """Name, type, default and one line of help per field of ``model``."""
    out = []
    for name, field in model.model_fields.items():
        required = field.is_required()
        if required:
            default = "(required)"
        else:
            value = field.default_factory() if field.default_factory is not None else field.default
            default = _show(value)
        doc = (field.description or "").strip().splitlines()
        out.append(ParamDoc(name, _type_name(field.annotation), default,
                            doc[0] if doc else "", required))
    return out

