"""Code an experiment file may name, and the opt-in that lets it be loaded.

An experiment file is data from anyone: nothing it says makes nasframe import or
run code that is not an installed nasframe plugin. A component parameter that
names code to load (an Optuna sampler's class path ``pkg.module.Class``, an
OptunaHub package ``optunahub:NAME``, an NNI tuner's class path) is refused unless
the person running nasframe allowed it, outside the file:

* the command line: ``nasframe run EXP.yaml --allow-code 'optunahub:*'``
  (``--allow-code`` is repeatable and takes shell-style patterns; ``*`` allows any);
* the environment: ``NASFRAME_ALLOW_CODE='optunahub:*,mypkg.samplers.*'``;
* Python: ``nasframe.allow_code("mypkg.samplers.MySampler")`` or
  ``with nasframe.allow_code(...):``.

Components check with :func:`require` when they are made (so ``nasframe
validate`` reports a refused name without importing anything) and import the
code only when the search needs it (:func:`check_only` tells them that nothing
must be imported now: ``validate`` runs in that mode).
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterator

from nasframe.params import ParamError

ENV = "NASFRAME_ALLOW_CODE"

_allowed: list[str] = []
_check_only = 0


def _patterns() -> list[str]:
    env = [p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()]
    return _allowed + env


def allowed(spec: str) -> bool:
    """True when ``spec`` (e.g. ``optunahub:hebo``, ``pkg.mod.Class``) matches an allowed pattern."""
    spec = spec.strip()
    return any(p == "*" or fnmatch.fnmatchcase(spec, p) for p in _patterns())


class _Allowance(contextlib.AbstractContextManager):
    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = [p.strip() for p in patterns if p and p.strip()]
        _allowed.extend(self.patterns)

    def __exit__(self, *exc) -> None:
        for p in self.patterns:
            if p in _allowed:
                _allowed.remove(p)


def allow_code(*patterns: str) -> _Allowance:
    """Allow experiment files to name code matching ``patterns`` (shell-style: ``optunahub:*``,
    ``mypkg.*``, ``*``). Lasts for the process, or for a ``with`` block."""
    return _Allowance(patterns)


def require(spec: str, field: str, what: str) -> None:
    """Raise a ParamError for ``field`` unless code ``spec`` is allowed; ``what`` says what it is
    (``an Optuna sampler class path``)."""
    if allowed(spec):
        return
    raise ParamError(field, (
        f"{spec!r} is {what}: loading it would run code named by the experiment file, which "
        f"nasframe never does on the file's word. Name a built-in instead, or allow it where "
        f"you run nasframe: `--allow-code '{spec.strip()}'` on the command line, "
        f"{ENV}='{spec.strip()}' in the environment, or nasframe.allow_code(...) in Python"))


@contextlib.contextmanager
def check_only() -> Iterator[None]:
    """Within this block components check names and permissions but import no named code."""
    global _check_only
    _check_only += 1
    try:
        yield
    finally:
        _check_only -= 1


def checking_only() -> bool:
    """True inside :func:`check_only` (``nasframe validate``)."""
    return _check_only > 0
